"""The workspace agent: a userspace WireGuard peer serving the agent API (agent-api.md)."""
from __future__ import annotations
