"""The agent's HTTP API (port 4): :mod:`.router` (routing by the :mod:`agentconn.proto.routes`
table, error bodies, request context) and one module per feature: files (with editing and
fsutil), processes, listening ports, MCP, context config and the debug routes."""
