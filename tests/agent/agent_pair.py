"""An Agent and an AgentConn in one process over a real userspace WireGuard tunnel (loopback UDP)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentconn.agent.agent import Agent
from agentconn.agent.options import AgentOptions
from agentconn.aio.tunnel import Tunnel
from agentconn.cli.commands import pair_configs as cli_pair_configs
from agentconn.client.conn import AgentConn

AGENT_ID = uuid.UUID("12345678-1234-1234-1234-123456789abc")


def pair_configs(agent_id: uuid.UUID = AGENT_ID) -> tuple[str, str, str]:
    """(agent config, client config, client address); no endpoint, no listen port."""
    return cli_pair_configs(agent_id)


@dataclass
class Pair:
    agent: Agent
    conn: AgentConn
    client_tunnel: Tunnel
    home: Path
    work: Path


def make_options(root: Path, **kw: Any) -> AgentOptions:
    home, work, logs = root / "home", root / "work", root / "logs"
    for d in (home, work, logs):
        d.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_AGENT_EXP_")}
    env["HOME"] = str(home)
    return AgentOptions(home=str(home), directory=str(work), environ=env, log_dir=str(logs), **kw)


@asynccontextmanager
async def agent_pair(root: Path, *, agent_kwargs: dict[str, Any] | None = None,
                     conn_kwargs: dict[str, Any] | None = None,
                     services: tuple[str, ...] = (),
                     agent_options: dict[str, Any] | None = None) -> AsyncIterator[Pair]:
    """``services``: the agent's stream services to run (none by default, so tests can start
    their own server on ``p.agent.tunnel``). ``agent_options``: extra AgentOptions fields."""
    agent_conf, client_conf, _ = pair_configs()
    options = make_options(root, **(agent_options or {}))
    agent = Agent(agent_conf, AGENT_ID, options=options, listen_host="127.0.0.1",
                  services=services, **(agent_kwargs or {}))
    await agent.start()
    client = Tunnel.from_config(client_conf, listen_host="127.0.0.1")
    await client.start()
    try:
        client.set_peer_endpoint(agent.tunnel.public_key, "127.0.0.1", agent.tunnel.listen_port)
        conn = AgentConn(client, AGENT_ID, **(conn_kwargs or {}))
        try:
            yield Pair(agent, conn, client, Path(options.home), Path(options.directory or ""))
        finally:
            await conn.close()
    finally:
        await client.close()
        await agent.close()
