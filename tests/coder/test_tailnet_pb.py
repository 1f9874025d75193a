"""The protobuf codec and the coder.tailnet.v2 messages.

Vectors: coder-control-plane.md §8.3 (computed, cross-checked there against the python
``protobuf`` runtime with a descriptor built from the field numbers of §4).
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentconn.coder.errors import ProtobufError
from agentconn.coder.protobuf import (
    decode_varint,
    encode_varint,
    iter_fields,
    zigzag_encode,
)
from agentconn.coder.tailnet_pb import (
    CoordinateRequest,
    CoordinateResponse,
    DERPMap,
    DERPNode,
    DERPRegion,
    Disconnect,
    HomeParams,
    Node,
    PeerUpdate,
    PeerUpdateKind,
    ReadyForHandshake,
    StreamDERPMapsRequest,
    Timestamp,
    Tunnel,
    UpdateSelf,
)

CLIENT = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
AGENT = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
TEST_PUB = bytes.fromhex("50d20b455ecf12bc453f83c2cfdb2a24925d06cf2598dcaa54e91af82ce9f765")
DISCO = "discokey:e9c708de3be9cc95d079153cceaf5ffce8aa7fb218522ef826fbfb8ac2fc0b34"
ADDR = "fd7a:115c:a1e0:6677:8899:aabb:ccdd:eeff/128"

NODE = Node(
    id=1234,
    as_of=Timestamp(1700000000),
    key=b"np" + TEST_PUB,
    disco=DISCO,
    preferred_derp=999,
    derp_latency={"999-v4": 0.0125},
    addresses=(ADDR,),
    allowed_ips=(ADDR,),
)
UPDATE_SELF_HEX = (
    "0aed01" "0aea01" "08d209" "1206" "0880e2cfaa06" "1a22" "6e70" + TEST_PUB.hex()
    + "2249" + DISCO.encode().hex() + "28e707" "3211" "0a06" "3939392d7634" "11"
    "9a9999999999893f" "422b" + ADDR.encode().hex() + "4a2b" + ADDR.encode().hex()
)  # fmt: skip
EMBEDDED_HEX = (
    "0a00" "1253" "08e707" "124e" "08e707" "1001" "1a05" "636f646572"
    "2214" "436f64657220456d6265646465642052656c6179" "322a" "0a04" "39393962" "10e707"
    "1a11" "636f6465722e6578616d706c652e636f6d" "38" "ffffffffffffffffff01" "48bb03"
)  # fmt: skip
EMBEDDED = DERPMap(
    home_params=HomeParams(),
    regions={
        999: DERPRegion(
            999, True, "coder", "Coder Embedded Relay",
            nodes=(DERPNode("999b", 999, "coder.example.com", stun_port=-1, derp_port=443),),
        )
    },
)  # fmt: skip
ERROR_TEXT = f'you do not share a tunnel with "{AGENT}"'

VECTORS = [  # §8.3 "Protobuf"
    (CoordinateRequest(add_tunnel=Tunnel.to(AGENT)), "1a120a10" + AGENT.bytes.hex()),
    (CoordinateRequest(disconnect=Disconnect()), "1200"),
    (
        CoordinateRequest(ready_for_handshake=(ReadyForHandshake(CLIENT.bytes),)),
        "2a120a10" + CLIENT.bytes.hex(),
    ),
    (
        CoordinateResponse(
            peer_updates=(PeerUpdate(CLIENT.bytes, kind=PeerUpdateKind.READY_FOR_HANDSHAKE),)
        ),
        "0a140a10" + CLIENT.bytes.hex() + "1804",
    ),
    (
        CoordinateResponse(
            peer_updates=(PeerUpdate(AGENT.bytes, kind=PeerUpdateKind.LOST, reason="lost"),)
        ),
        "0a1a0a10" + AGENT.bytes.hex() + "180322046c6f7374",
    ),
    (CoordinateResponse(error=ERROR_TEXT), "1245" + ERROR_TEXT.encode().hex()),
    (CoordinateRequest(update_self=UpdateSelf(NODE)), UPDATE_SELF_HEX),
    (EMBEDDED, EMBEDDED_HEX),
    (StreamDERPMapsRequest(), ""),
    (CoordinateRequest(remove_tunnel=Tunnel.to(AGENT)), "22120a10" + AGENT.bytes.hex()),
]


@pytest.mark.parametrize(("message", "hex_"), VECTORS)
def test_vectors_both_ways(message: object, hex_: str) -> None:
    assert message.encode().hex() == hex_  # type: ignore[attr-defined]
    assert type(message).decode(bytes.fromhex(hex_)) == message  # type: ignore[attr-defined]


def test_update_self_is_240_bytes_and_derp_map_87() -> None:
    assert len(bytes.fromhex(UPDATE_SELF_HEX)) == 240
    assert len(bytes.fromhex(EMBEDDED_HEX)) == 87


def test_helpers() -> None:
    assert Tunnel.to(AGENT).uuid == AGENT
    assert PeerUpdate(CLIENT.bytes).uuid == CLIENT
    with pytest.raises(ProtobufError, match="unable to convert bytes to UUID"):
        _ = Tunnel(b"short").uuid
    assert Timestamp.from_time(1700000000.123456) == Timestamp(1700000000, 123456000)
    assert Timestamp(5, 500_000_000).to_time() == 5.5


def test_zero_values_are_omitted_but_set_messages_are_not() -> None:
    assert Node().encode() == b""
    assert UpdateSelf(Node()).encode() == bytes.fromhex("0a00")
    assert DERPMap(home_params=HomeParams()).encode() == bytes.fromhex("0a00")
    assert Node(derp_latency={"x": 0.0}).encode() == bytes.fromhex("320c0a0178110000000000000000")
    assert Node(addresses=("",)).encode() == bytes.fromhex("4200")  # repeated: every element
    assert HomeParams({0: 1.0}).encode() == bytes.fromhex("0a0b080011000000000000f03f")


def test_negative_and_large_integers() -> None:
    node = DERPNode(stun_port=-1, region_id=-(2**63))
    raw = node.encode()
    assert DERPNode.decode(raw) == node
    assert PeerUpdate(kind=7).encode() == bytes.fromhex("1807")
    assert PeerUpdate.decode(bytes.fromhex("1807")).kind == 7  # open enum keeps unknown kinds
    assert isinstance(PeerUpdate.decode(bytes.fromhex("1801")).kind, PeerUpdateKind)


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    base = CoordinateRequest(add_tunnel=Tunnel.to(AGENT)).encode()
    unknown = (
        bytes.fromhex("b001" "96ac02")  # field 22 varint
        + bytes.fromhex("b901") + bytes(8)  # field 23 fixed64
        + bytes.fromhex("c20103") + b"abc"  # field 24 length-delimited
        + bytes.fromhex("cb01" "0801" "d301" "1002" "d401" "cc01")  # group 25 ⊃ group 26
        + bytes.fromhex("d501") + bytes(4)  # field 26 fixed32
        + bytes.fromhex("1801")  # field 3 (add_tunnel) with the wrong wire type: skipped
    )  # fmt: skip
    assert CoordinateRequest.decode(unknown + base + unknown) == CoordinateRequest.decode(base)


def test_singular_message_fields_merge_and_scalars_last_wins() -> None:
    raw = (
        Node(id=1, disco="a").encode()
        + Node(id=2, preferred_derp=7).encode()
        + Node(addresses=("x",)).encode()
    )
    assert Node.decode(raw) == Node(id=2, disco="a", preferred_derp=7, addresses=("x",))
    first = UpdateSelf(Node(id=1)).encode()
    second = UpdateSelf(Node(disco="d")).encode()
    merged = CoordinateRequest.decode(
        b"\x0a" + bytes([len(first)]) + first + b"\x0a" + bytes([len(second)]) + second
    )
    assert merged.update_self == UpdateSelf(Node(id=1, disco="d"))


@pytest.mark.parametrize(
    ("hex_", "message"),
    [
        ("0a", "truncated varint"),
        ("0a05", "runs past the end"),
        ("08", "truncated varint"),
        ("09000000", "truncated fixed64"),
        ("0f", "invalid wire type 7"),
        ("0e", "invalid wire type 6"),
        ("00", "invalid field number 0"),
        ("08" + "80" * 10 + "01", "overflows 64 bits"),  # 11 bytes
        ("08" + "ff" * 9 + "02", "overflows 64 bits"),
        ("0b", "unterminated group"),
        ("0c", "end group"),
        ("0b14", "mismatched end group"),
        ("2204fffe0000", "invalid wire type 7"),  # inside remove_tunnel
    ],
)
def test_malformed_input_is_rejected(hex_: str, message: str) -> None:
    with pytest.raises(ProtobufError, match=message):
        CoordinateRequest.decode(bytes.fromhex(hex_))


def test_invalid_utf8_in_a_string_field() -> None:
    with pytest.raises(ProtobufError, match="UTF-8"):
        CoordinateResponse.decode(bytes.fromhex("1202c328"))


def test_primitives() -> None:
    assert encode_varint(300) == b"\xac\x02"
    assert decode_varint(b"\xac\x02") == (300, 2)
    assert [zigzag_encode(v) for v in (0, -1, 1, -2, 2**63 - 1, -(2**63))] == [
        0, 1, 2, 3, 2**64 - 2, 2**64 - 1,
    ]  # fmt: skip
    assert list(iter_fields(bytes.fromhex("0801120161"))) == [(1, 0, 1), (2, 2, b"a")]


# --- properties ----------------------------------------------------------------------------

text = st.text(max_size=20)
i64 = st.integers(-(2**63), 2**63 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
doubles = st.floats(allow_nan=False)
nodes = st.builds(
    Node,
    id=i64,
    as_of=st.none() | st.builds(Timestamp, i64, st.integers(0, 999_999_999)),
    key=st.binary(max_size=40),
    disco=text,
    preferred_derp=i32,
    derp_latency=st.dictionaries(text, doubles, max_size=3),
    derp_forced_websocket=st.dictionaries(i32, text, max_size=3),
    addresses=st.lists(text, max_size=3).map(tuple),
    allowed_ips=st.lists(text, max_size=3).map(tuple),
    endpoints=st.lists(text, max_size=3).map(tuple),
)
tunnels = st.builds(Tunnel, st.binary(max_size=20))
requests = st.builds(
    CoordinateRequest,
    update_self=st.none() | st.builds(UpdateSelf, st.none() | nodes),
    disconnect=st.none() | st.just(Disconnect()),
    add_tunnel=st.none() | tunnels,
    remove_tunnel=st.none() | tunnels,
    ready_for_handshake=st.lists(
        st.builds(ReadyForHandshake, st.binary(max_size=20)), max_size=3
    ).map(tuple),
)
responses = st.builds(
    CoordinateResponse,
    peer_updates=st.lists(
        st.builds(
            PeerUpdate,
            id=st.binary(max_size=20),
            node=st.none() | nodes,
            kind=st.sampled_from(list(PeerUpdateKind)) | st.integers(5, 100),
            reason=text,
        ),
        max_size=3,
    ).map(tuple),
    error=text,
)
derp_nodes = st.builds(
    DERPNode,
    name=text, region_id=i64, host_name=text, cert_name=text, ipv4=text, ipv6=text,
    stun_port=i32, stun_only=st.booleans(), derp_port=i32, insecure_for_tests=st.booleans(),
    force_http=st.booleans(), stun_test_ip=text, can_port_80=st.booleans(),
)  # fmt: skip
derp_maps = st.builds(
    DERPMap,
    home_params=st.none() | st.builds(HomeParams, st.dictionaries(i64, doubles, max_size=3)),
    regions=st.dictionaries(
        i64,
        st.builds(
            DERPRegion,
            region_id=i64,
            embedded_relay=st.booleans(),
            region_code=text,
            region_name=text,
            avoid=st.booleans(),
            nodes=st.lists(derp_nodes, max_size=2).map(tuple),
        ),
        max_size=3,
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(requests, responses, derp_maps))
def test_decode_encode_round_trip(message: object) -> None:
    raw = message.encode()  # type: ignore[attr-defined]
    assert type(message).decode(raw) == message  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(st.one_of(requests, responses, derp_maps), st.data())
def test_truncation_is_rejected_or_decodes(message: object, data: st.DataObject) -> None:
    raw = message.encode()  # type: ignore[attr-defined]
    if not raw:
        return
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        type(message).decode(raw[:cut])  # type: ignore[attr-defined]
    except ProtobufError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_gives_a_message_or_protobuf_error(raw: bytes) -> None:
    """Invariant: a message or ProtobufError, nothing else."""
    for cls in (CoordinateRequest, CoordinateResponse, DERPMap, Node):
        try:
            cls.decode(raw)
        except ProtobufError:
            pass
