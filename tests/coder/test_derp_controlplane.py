"""The DERP relay mounted in the test coderd (controlplane.py), reached the way a client does
it: REST connection info → DERP map → :class:`DerpPool` on the home region (§5.8, §8.1, §8.2)."""
from __future__ import annotations

import asyncio

import pytest
from controlplane import TOKEN, ControlPlane

from agentconn.coder.api import CoderApi, Credentials
from agentconn.coder.derp import DerpClient, DerpMap, DerpPool, DerpServer, PacketReceived
from agentconn.coder.keys import NodePrivate


@pytest.mark.parametrize("force_websockets", [False, True], ids=["upgrade", "websocket"])
async def test_relay_behind_the_test_coderd(force_websockets: bool) -> None:
    plane = ControlPlane()
    relay = DerpServer()
    plane.extra_routes["/derp"] = relay.handle  # one port for REST and DERP, as coderd
    await plane.start()
    try:
        ws = plane.add_workspace("dev", "main")
        plane.derp_force_websockets = force_websockets
        async with CoderApi(Credentials(plane.url, TOKEN)) as api:
            info = await api.connection_info(ws.agents[0].id)
        derp_map = DerpMap.from_json(info.derp_map)
        pool = DerpPool(NodePrivate.generate(), derp_map,
                        force_websockets=info.derp_force_websockets)
        await pool.start()
        agent = DerpClient(NodePrivate.generate(), derp_map.regions[pool.home_region],
                           force_websockets=info.derp_force_websockets)
        await agent.connect()
        try:
            await pool.send(pool.home_region, agent.public_key, b"hello agent")
            async with asyncio.timeout(10):
                while not isinstance(event := await agent.next_event(), PacketReceived):
                    pass
            assert event.data == b"hello agent"
            assert relay.stats()[f"accepts_{'websocket' if force_websockets else 'upgrade'}"] == 2
            async with CoderApi(Credentials(plane.url, TOKEN)) as api:  # REST still served
                assert (await api.connection_info(ws.agents[0].id)).derp_map == info.derp_map
        finally:
            await agent.close()
            await pool.close()
    finally:
        await relay.close()
        await plane.close()
