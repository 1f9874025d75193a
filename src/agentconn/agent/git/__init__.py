"""Git watch (agent-api.md §10): chats' touched paths, repository scans, the websocket."""

from agentconn.agent.git.paths import PathStore
from agentconn.agent.git.watch import GitWatchApi

__all__ = ["GitWatchApi", "PathStore"]
