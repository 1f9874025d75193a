# cython: language_level=3
"""The WireGuard constants the C data path is built on, for Python.

Their single source is C: the enums (message types, exact sizes, header and tag lengths) and the
limit macros (REKEY_AFTER_MESSAGES, REKEY/REJECT_AFTER_TIME) of ``state.pxd``, and the replay
window and REJECT_AFTER_MESSAGES of ``replay.pxd``. ``agentconn.wg.constants`` re-exports them
under the names wireguard-go and the whitepaper use, next to the spec constants only the Python
control path needs.
"""
cimport _wgcore.replay as replay
cimport _wgcore.state as state

# Message types (whitepaper §5.4; wireguard.md §2, §3).
MESSAGE_INITIATION = state.MESSAGE_INITIATION
MESSAGE_RESPONSE = state.MESSAGE_RESPONSE
MESSAGE_COOKIE_REPLY = state.MESSAGE_COOKIE_REPLY
MESSAGE_TRANSPORT = state.MESSAGE_TRANSPORT

# Exact message sizes, and the transport message's header and minimum (wireguard.md §3).
MESSAGE_INITIATION_SIZE = state.INITIATION_LEN
MESSAGE_RESPONSE_SIZE = state.RESPONSE_LEN
MESSAGE_COOKIE_REPLY_SIZE = state.COOKIE_REPLY_LEN
TRANSPORT_HEADER_SIZE = state.TRANSPORT_HEADER_LEN
MESSAGE_TRANSPORT_MIN_SIZE = state.TRANSPORT_OVERHEAD

# Primitive sizes (wireguard.md §1).
KEY_SIZE = state.KEY_LEN
TAG_SIZE = state.TAG_LEN

# Limits (wireguard.md §7.1, §10).
REKEY_AFTER_MESSAGES = state.REKEY_AFTER_MESSAGES
REJECT_AFTER_MESSAGES = replay.REJECT_AFTER_MESSAGES
REKEY_AFTER_TIME = state.REKEY_AFTER_TIME
REJECT_AFTER_TIME = state.REJECT_AFTER_TIME
REPLAY_WINDOW = replay.REPLAY_WINDOW
