"""The package version, in one place: ``agentconn.__version__``, the packaging metadata
(``pyproject.toml`` reads it statically) and what the agent reports about itself (MCP client
info) all take it from here."""

__version__ = "0.1.0"
