"""WireGuard protocol constants, with the names the whitepaper and wireguard-go use.

Every value cites where it comes from. "spec" is the project's protocol notes
(``spec/wireguard.md``); "whitepaper" is "WireGuard: Next Generation Kernel Network Tunnel";
"wg-go" is wireguard-go ``device/constants.go`` unless another file is named.
Implementation constants that are not protocol rules do not belong here.

The numbers the C data path also enforces (message types and sizes, header, tag and key sizes,
the message and time limits, the replay window) are defined once, in ``_wgcore/state.pxd`` and
``_wgcore/replay.pxd``, and taken from ``_wgcore.constants`` here.
"""

from __future__ import annotations

import hashlib
from typing import Final

from _wgcore import constants as _core

__all__ = [
    "C0",
    "CONSTRUCTION",
    "COOKIE_NONCE_SIZE",
    "COOKIE_REFRESH_TIME",
    "COOKIE_SIZE",
    "ENCRYPTED_COOKIE_SIZE",
    "ENCRYPTED_NOTHING_SIZE",
    "ENCRYPTED_STATIC_SIZE",
    "ENCRYPTED_TIMESTAMP_SIZE",
    "H0",
    "HANDSHAKE_INITIATION_RATE",
    "HANDSHAKE_QUEUE_WINDOW",
    "HASH_SIZE",
    "IDENTIFIER",
    "KEEPALIVE_TIMEOUT",
    "KEY_SIZE",
    "LABEL_COOKIE",
    "LABEL_MAC1",
    "MAC_SIZE",
    "MAX_STAGED_PACKETS",
    "MAX_TIMER_HANDSHAKES",
    "MESSAGE_COOKIE_REPLY",
    "MESSAGE_COOKIE_REPLY_SIZE",
    "MESSAGE_INITIATION",
    "MESSAGE_INITIATION_SIZE",
    "MESSAGE_KEEPALIVE_SIZE",
    "MESSAGE_RESPONSE",
    "MESSAGE_RESPONSE_SIZE",
    "MESSAGE_TRANSPORT",
    "MESSAGE_TRANSPORT_MIN_SIZE",
    "OFFSET_COOKIE_ENCRYPTED",
    "OFFSET_COOKIE_NONCE",
    "OFFSET_COOKIE_RECEIVER",
    "OFFSET_INITIATION_EPHEMERAL",
    "OFFSET_INITIATION_MAC1",
    "OFFSET_INITIATION_MAC2",
    "OFFSET_INITIATION_SENDER",
    "OFFSET_INITIATION_STATIC",
    "OFFSET_INITIATION_TIMESTAMP",
    "OFFSET_RESPONSE_EMPTY",
    "OFFSET_RESPONSE_EPHEMERAL",
    "OFFSET_RESPONSE_MAC1",
    "OFFSET_RESPONSE_MAC2",
    "OFFSET_RESPONSE_RECEIVER",
    "OFFSET_RESPONSE_SENDER",
    "OFFSET_TRANSPORT_CONTENT",
    "OFFSET_TRANSPORT_COUNTER",
    "OFFSET_TRANSPORT_RECEIVER",
    "OFFSET_TYPE",
    "RATE_LIMITER_GC_TIME",
    "RATE_LIMITER_PACKETS_BURSTABLE",
    "RATE_LIMITER_PACKETS_PER_SECOND",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_TIME",
    "REKEY_ATTEMPT_TIME",
    "REKEY_TIMEOUT",
    "REKEY_TIMEOUT_JITTER_MAX",
    "REPLAY_WINDOW",
    "TAG_SIZE",
    "TAI64N_BASE",
    "TAI64N_WHITENER_MASK",
    "TIMESTAMP_SIZE",
    "TRANSPORT_HEADER_SIZE",
    "UNDER_LOAD_AFTER_TIME",
    "UNDER_LOAD_QUEUE_THRESHOLD",
    "ZERO_KEY_MATERIAL_AFTER",
]

# --- Strings and initial chaining key / hash (whitepaper §5.4; spec §2) ---------------------

# Noise protocol name (whitepaper §5.4 "Construction").
CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
# Noise prologue (whitepaper §5.4 "Identifier").
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
# Label mixed into the mac1 key (whitepaper §5.4.4; spec §5).
LABEL_MAC1: Final = b"mac1----"
# Label mixed into the cookie encryption key (whitepaper §5.4.7; spec §5).
LABEL_COOKIE: Final = b"cookie--"
# C0 = HASH(CONSTRUCTION) (whitepaper §5.4.2; spec §2 gives 60e26dae…cd36).
C0: Final = hashlib.blake2s(CONSTRUCTION).digest()
# H0 = HASH(C0 || IDENTIFIER) (whitepaper §5.4.2; spec §2 gives 2211b361…9ef3).
H0: Final = hashlib.blake2s(C0 + IDENTIFIER).digest()

# --- Primitive sizes (spec §1) ----------------------------------------------------------------

KEY_SIZE: Final = _core.KEY_SIZE  # Curve25519 keys, AEAD keys, PSK
HASH_SIZE: Final = 32  # BLAKE2s-256 output
MAC_SIZE: Final = 16  # keyed BLAKE2s with digest_size=16 (mac1, mac2, cookie)
TAG_SIZE: Final = _core.TAG_SIZE  # Poly1305 tag
TIMESTAMP_SIZE: Final = 12  # TAI64N
COOKIE_SIZE: Final = 16  # MAC(secret, source)
COOKIE_NONCE_SIZE: Final = 24  # XChaCha20 nonce

# --- Message types (whitepaper §5.4; spec §2, §3) ---------------------------------------------

MESSAGE_INITIATION: Final = _core.MESSAGE_INITIATION
MESSAGE_RESPONSE: Final = _core.MESSAGE_RESPONSE
MESSAGE_COOKIE_REPLY: Final = _core.MESSAGE_COOKIE_REPLY
MESSAGE_TRANSPORT: Final = _core.MESSAGE_TRANSPORT

# --- Message sizes (spec §3; wg-go MessageInitiationSize etc.) --------------------------------

MESSAGE_INITIATION_SIZE: Final = _core.MESSAGE_INITIATION_SIZE  # spec §3.1
MESSAGE_RESPONSE_SIZE: Final = _core.MESSAGE_RESPONSE_SIZE  # spec §3.2
MESSAGE_COOKIE_REPLY_SIZE: Final = _core.MESSAGE_COOKIE_REPLY_SIZE  # spec §3.3
# spec §3.4: type+reserved, receiver, counter
TRANSPORT_HEADER_SIZE: Final = _core.TRANSPORT_HEADER_SIZE
MESSAGE_TRANSPORT_MIN_SIZE: Final = _core.MESSAGE_TRANSPORT_MIN_SIZE  # header + tag, spec §3.4
MESSAGE_KEEPALIVE_SIZE: Final = MESSAGE_TRANSPORT_MIN_SIZE  # empty payload, spec §3.4

# --- Field offsets (spec §3) -----------------------------------------------------------------

# Common header: byte 0 type, bytes 1..3 reserved zero, read together as u32 LE (spec §3).
OFFSET_TYPE: Final = 0

# Handshake initiation (spec §3.1).
OFFSET_INITIATION_SENDER: Final = 4
OFFSET_INITIATION_EPHEMERAL: Final = 8
OFFSET_INITIATION_STATIC: Final = 40
OFFSET_INITIATION_TIMESTAMP: Final = 88
OFFSET_INITIATION_MAC1: Final = 116
OFFSET_INITIATION_MAC2: Final = 132
ENCRYPTED_STATIC_SIZE: Final = KEY_SIZE + TAG_SIZE  # 48
ENCRYPTED_TIMESTAMP_SIZE: Final = TIMESTAMP_SIZE + TAG_SIZE  # 28

# Handshake response (spec §3.2).
OFFSET_RESPONSE_SENDER: Final = 4
OFFSET_RESPONSE_RECEIVER: Final = 8
OFFSET_RESPONSE_EPHEMERAL: Final = 12
OFFSET_RESPONSE_EMPTY: Final = 44
OFFSET_RESPONSE_MAC1: Final = 60
OFFSET_RESPONSE_MAC2: Final = 76
ENCRYPTED_NOTHING_SIZE: Final = TAG_SIZE  # 16

# Cookie reply (spec §3.3).
OFFSET_COOKIE_RECEIVER: Final = 4
OFFSET_COOKIE_NONCE: Final = 8
OFFSET_COOKIE_ENCRYPTED: Final = 32
ENCRYPTED_COOKIE_SIZE: Final = COOKIE_SIZE + TAG_SIZE  # 32

# Transport data (spec §3.4).
OFFSET_TRANSPORT_RECEIVER: Final = 4
OFFSET_TRANSPORT_COUNTER: Final = 8
OFFSET_TRANSPORT_CONTENT: Final = 16

# --- TAI64N (spec §1; wg-go tai64n/tai64n.go) -------------------------------------------------

# TAI64 label of the Unix epoch: 2^62 + 10 (wg-go tai64n.go "base"; kernel identical).
TAI64N_BASE: Final = 0x400000000000000A
# Nanoseconds are "whitened" by clearing their low 24 bits (wg-go whitenerMask = 0x1000000 - 1).
TAI64N_WHITENER_MASK: Final = 0xFFFFFF

# --- Timers and limits (whitepaper §6.1; wg-go constants.go; spec §7.1) -----------------------

REKEY_AFTER_MESSAGES: Final = _core.REKEY_AFTER_MESSAGES  # wg-go RekeyAfterMessages
REJECT_AFTER_MESSAGES: Final = _core.REJECT_AFTER_MESSAGES  # wg-go RejectAfterMessages
REKEY_AFTER_TIME: Final = _core.REKEY_AFTER_TIME  # s, wg-go RekeyAfterTime
REJECT_AFTER_TIME: Final = _core.REJECT_AFTER_TIME  # s, wg-go RejectAfterTime
REKEY_ATTEMPT_TIME: Final = 90.0  # s, wg-go RekeyAttemptTime
REKEY_TIMEOUT: Final = 5.0  # s, wg-go RekeyTimeout
REKEY_TIMEOUT_JITTER_MAX: Final = 0.334  # s, wg-go RekeyTimeoutJitterMaxMs = 334 (exclusive)
MAX_TIMER_HANDSHAKES: Final = 18  # wg-go MaxTimerHandshakes = 90 / 5
KEEPALIVE_TIMEOUT: Final = 10.0  # s, wg-go KeepaliveTimeout
COOKIE_REFRESH_TIME: Final = 120.0  # s, wg-go CookieRefreshTime (kernel: 115 s for mac2)
HANDSHAKE_INITIATION_RATE: Final = 0.020  # s, wg-go HandshakeInitationRate = 1 s / 50
ZERO_KEY_MATERIAL_AFTER: Final = 3 * REJECT_AFTER_TIME  # 540 s, wg-go timers.go / spec §7.1
UNDER_LOAD_AFTER_TIME: Final = 1.0  # s, wg-go UnderLoadAfterTime
UNDER_LOAD_QUEUE_THRESHOLD: Final = 128  # wg-go QueueHandshakeSize / 8 = 1024 / 8 (spec §5)
# Ours, not wg-go's: our control path has no handshake queue, so "queued" is modelled as the
# handshake messages received within one window of this length (device.py): 128 per 100 ms.
HANDSHAKE_QUEUE_WINDOW: Final = 0.1  # s
MAX_STAGED_PACKETS: Final = 128  # kernel MAX_STAGED_PACKETS; wg-go QueueStagedSize (spec §7.1)
REPLAY_WINDOW: Final = _core.REPLAY_WINDOW  # wg-go replay/replay.go windowSize (spec §10)

# --- Handshake rate limiter (wg-go ratelimiter/ratelimiter.go; kernel ratelimiter.c; spec §5) --

RATE_LIMITER_PACKETS_PER_SECOND: Final = 20  # packetsPerSecond
RATE_LIMITER_PACKETS_BURSTABLE: Final = 5  # packetsBurstable
RATE_LIMITER_GC_TIME: Final = 1.0  # s, garbageCollectTime: idle entries are dropped after this
