"""Fixed keys of coder-control-plane.md §8.3 and a fake-clock pair of DERP cores.

:class:`DerpPair` puts a :class:`DerpClientConnection` and a :class:`DerpServerConnection`
back to back in memory (h11's ``ConnectionPair`` idea): :meth:`DerpPair.pump` moves bytes both
ways until quiet; ``now`` only moves when a test moves it.
"""
from __future__ import annotations

from agentconn.coder.derp.clientconn import DerpClientConnection
from agentconn.coder.derp.serverconn import DerpServerConnection, Relay
from agentconn.coder.keys import DiscoPrivate, NodePrivate

# types/key/node_test.go TestNodeSerialization
TEST_NODE_PRIV = "privkey:40ab1b58e9076c7a4d9d07291f5edf9d1aa017eb949624ba683317f48a640369"
TEST_NODE_PUB = "nodekey:50d20b455ecf12bc453f83c2cfdb2a24925d06cf2598dcaa54e91af82ce9f765"
# §8.3 computed vectors (deterministic inputs)
DISCO_PRIV = "a0d863abd0f429b871371ca249e5d6dc52f7749efb725ac7ad26a42ad1542366"
DISCO_PUB = "e9c708de3be9cc95d079153cceaf5ffce8aa7fb218522ef826fbfb8ac2fc0b34"
SERVER_PRIV = "d0960ddc852a91c67dd98906a398828eb98368be46201093b7725000bd285651"
SERVER_PUB = "2a8719e9a1264d35049b2234da2e618a34a06c4a32bfebc95bda057d0a5b1748"
AGENT_PRIV = "d8c83c5aec21a0068cefa69c68f57791b14e160b0a8a709e2eda839d11b25d67"
AGENT_PUB = "1f0403c2ceed013abe7717931e241ff2ba0b956b4c1a2fc47649c6655aae7837"
AGENT_DISCO_PRIV = "f0cac042ad8c0ddf9a5184c64b6eda228acdc83dad35ae0a784b5bfdd958e76c"
AGENT_DISCO_PUB = "5930ed03df93a5f29c052560ec72ed0699f81c6b4093a0a0f9169ad9fd3c4815"


def client_key() -> NodePrivate:
    return NodePrivate.parse(TEST_NODE_PRIV)


def server_key() -> NodePrivate:
    return NodePrivate(bytes.fromhex(SERVER_PRIV))


def agent_key() -> NodePrivate:
    return NodePrivate(bytes.fromhex(AGENT_PRIV))


def disco_key() -> DiscoPrivate:
    return DiscoPrivate(bytes.fromhex(DISCO_PRIV))


def agent_disco_key() -> DiscoPrivate:
    return DiscoPrivate(bytes.fromhex(AGENT_DISCO_PRIV))


class DerpPair:
    """A client core and a server core wired back to back, sharing a fake clock."""

    def __init__(
        self,
        client_private: NodePrivate | None = None,
        *,
        relay: Relay | None = None,
        now: float = 1000.0,
        **server_kw: object,
    ) -> None:
        self.now = now
        self.relay = relay
        self.client = DerpClientConnection(client_private or client_key(), now)
        self.server = DerpServerConnection(server_key(), now, **server_kw)  # type: ignore[arg-type]
        self.server_events: list[object] = []
        self.client_events: list[object] = []

    def pump(self) -> None:
        """Move bytes both ways until neither side has anything to send."""
        while True:
            moved = False
            data = self.server.data_to_send()
            if data:
                self.client.receive_data(data, self.now)
                moved = True
            data = self.client.data_to_send()
            if data:
                self.server.receive_data(data, self.now)
                moved = True
            self._collect()
            if not moved:
                return

    def _collect(self) -> None:
        from agentconn.coder.derp.events import ClientAuthenticated

        while (ev := self.server.next_event()) is not None:
            if self.relay is not None and isinstance(ev, ClientAuthenticated):
                self.relay.register(self.server)
            self.server_events.append(ev)
        while (ev := self.client.next_event()) is not None:
            self.client_events.append(ev)

    def advance(self, seconds: float) -> None:
        """Move the clock and fire both cores' timers."""
        self.now += seconds
        self.client.handle_timer(self.now)
        self.server.handle_timer(self.now)
        self.pump()
