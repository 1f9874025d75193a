"""Role-agnostic protocol definitions shared by the client (``AgentConn``) and the agent.

:mod:`.models` holds the JSON bodies, :mod:`.routes` the HTTP route table, :mod:`.ports` the
tailnet addressing and well-known ports, :mod:`.errors` the decoding errors.
"""
