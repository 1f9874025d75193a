"""Desktop pieces that need no X server: Go's rounding and the coordinate mapping, xdotool key
syntax, the recording multipart framing, the §11.2 request checks, the Xvnc/ffmpeg
command lines and the scanner that finds a VNC viewer's input."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentconn.agent.desktop.actions import check_action, failure_message
from agentconn.agent.desktop.geometry import declared_size, go_round, to_declared, to_native
from agentconn.agent.desktop.keys import (
    Keymap,
    KeyNameError,
    char_keysym,
    parse_key_sequence,
    text_keysyms,
)
from agentconn.agent.desktop.recording import ffmpeg_command
from agentconn.agent.desktop.rfbinput import RfbInputScanner
from agentconn.agent.desktop.session import xvnc_command
from agentconn.agent.api.router import ApiError
from agentconn.proto.desktop import (
    DesktopActionRequest,
    DesktopActionResponse,
    ProtocolError,
    new_boundary,
    recording_close,
    recording_content_type,
    recording_part_head,
    split_recording,
)

# -- Go's math.Round and the §11.2 mapping ---------------------------------------------------


def test_go_round_halves_away_from_zero() -> None:
    assert [go_round(x) for x in (0.5, 1.5, 2.5, -0.5, -1.5, -2.5)] == [1, 2, 3, -1, -2, -3]
    assert [round(x) for x in (0.5, 1.5, 2.5)] == [0, 2, 2]  # why Python's round() is wrong
    assert go_round(0.49999999999999994) == 0  # floor(x + 0.5) would say 1
    assert go_round(2.4999) == 2 and go_round(-2.5001) == -3 and go_round(7.0) == 7


@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False))
def test_go_round_matches_the_definition(x: float) -> None:
    expected = math.floor(abs(x)) + (1 if abs(x) - math.floor(abs(x)) >= 0.5 else 0)
    assert go_round(x) == math.copysign(expected, x) or (expected == 0 and go_round(x) == 0)


def test_the_spec_tie_case_640x360_to_1280x720() -> None:
    # agent-api.md §11.2: every coordinate is a tie at exactly 2x.
    assert to_native((100, 50), (640, 360), (1280, 720)) == (201, 101)
    assert to_native((0, 0), (640, 360), (1280, 720)) == (1, 1)
    assert to_declared((201, 101), (640, 360), (1280, 720)) == (100, 50)


def test_mapping_clamps_and_equal_sizes_only_clamp() -> None:
    native = (640, 480)
    assert to_native((-5, 10_000), native, native) == (0, 479)
    assert to_native((100, 50), native, native) == (100, 50)
    assert to_native((-5, 10_000), (320, 240), native) == (0, 479)
    assert to_native((319, 239), (320, 240), native) == (639, 479)
    assert to_declared((639, 479), (320, 240), native) == (319, 239)
    # per axis: only the height is scaled here
    assert to_native((100, 100), (640, 240), native) == (100, 201)


def test_declared_size_each_axis_independently() -> None:
    assert declared_size((1920, 1080), None, None) == (1920, 1080)
    assert declared_size((1920, 1080), 1280, 720) == (1280, 720)
    assert declared_size((1920, 1080), 1280, None) == (1280, 1080)
    assert declared_size((1920, 1080), 0, -3) == (1920, 1080)


@given(st.integers(1, 4000), st.integers(1, 4000), st.integers(-100, 5000))
def test_native_is_always_on_screen_and_inverse_is_close(declared: int, native: int,
                                                         c: int) -> None:
    n = to_native((c, 0), (declared, 1), (native, 1))[0]
    assert 0 <= n <= native - 1
    back = to_declared((n, 0), (declared, 1), (native, 1))[0]
    assert 0 <= back <= declared - 1
    if 0 <= c < declared and native >= declared:
        assert back == c  # upscaling is lossless


# -- xdotool key syntax ----------------------------------------------------------------------


def test_key_sequences() -> None:
    ctrl, shift, alt, sup = 0xFFE3, 0xFFE1, 0xFFE9, 0xFFEB
    assert parse_key_sequence("ctrl+c") == [[ctrl, ord("c")]]
    assert parse_key_sequence("Return") == [[0xFF0D]]
    assert parse_key_sequence("shift+Tab") == [[shift, 0xFF09]]
    assert parse_key_sequence("super") == [[sup]]
    assert parse_key_sequence("alt+F4") == [[alt, 0xFFC1]]
    assert parse_key_sequence("ctrl+shift+t") == [[ctrl, shift, ord("t")]]
    assert parse_key_sequence("A") == [[ord("A")]]
    assert parse_key_sequence("ctrl+a BackSpace") == [[ctrl, ord("a")], [0xFF08]]
    assert parse_key_sequence("ctrl++") == [[ctrl, ord("+")]]
    assert parse_key_sequence("+") == [[ord("+")]]
    # case-insensitive names, aliases, punctuation, XF86 names, Unicode characters
    assert parse_key_sequence("return esc enter f4 page_down pageup") == [
        [0xFF0D], [0xFF1B], [0xFF0D], [0xFFC1], [0xFF56], [0xFF55]]
    assert parse_key_sequence("ctrl+,") == [[ctrl, ord(",")]]
    assert parse_key_sequence("XF86AudioMute") == [[0x1008FF12]]
    assert parse_key_sequence("€") == [[0x010020AC]]


@pytest.mark.parametrize("text", ["", "   ", "nosuchkey", "ctrl+", "ctrl+nokey", "a+++b"])
def test_bad_key_names_are_named(text: str) -> None:
    with pytest.raises(KeyNameError) as e:
        parse_key_sequence(text)
    assert "key" in str(e.value)


def test_text_keysyms() -> None:
    assert text_keysyms("aZ ~\n\t") == [ord("a"), ord("Z"), 0x20, ord("~"), 0xFF0D, 0xFF09]
    assert text_keysyms("x\r\ny") == [ord("x"), 0xFF0D, ord("y")]
    assert char_keysym("é") == 0xE9 and char_keysym("€") == 0x010020AC
    with pytest.raises(KeyNameError, match="U\\+0007"):
        char_keysym("\x07")


def test_keymap_prefers_unshifted_and_lists_spares() -> None:
    # keycodes 8.. : [a, A], [Shift_L], [], [1, !], [!]
    km = Keymap(8, [[0x61, 0x41], [0xFFE1, 0], [0, 0], [0x31, 0x21], [0x21, 0]])
    assert km.lookup(0x61) == (8, False)
    assert km.lookup(0x41) == (8, True)
    assert km.lookup(0x21) == (12, False)  # unshifted beats the shifted keycode 11
    assert km.lookup(0x20AC) is None
    assert km.spare_keycodes() == [10]
    km.set_row(10, [0x20AC, 0x20AC])
    assert km.lookup(0x20AC) == (10, False) and km.spare_keycodes() == []


# -- §11.2 request checks ------------------------------------------------------------------

NATIVE = (640, 480)


def _check(body: dict[str, object]):  # type: ignore[no-untyped-def]
    return check_action(DesktopActionRequest.from_obj(body), NATIVE)


@pytest.mark.parametrize(("body", "message"), [
    ({}, "Unknown action: "),
    ({"action": ""}, "Unknown action: "),
    ({"action": "fly"}, "Unknown action: fly"),
    *[({"action": a}, f'Missing "text" for {a} action.')
      for a in ("key", "key_down", "key_up", "hold_key", "type")],
    *[({"action": a}, f'Missing "coordinate" for {a} action.')
      for a in ("mouse_move", "left_click", "right_click", "middle_click", "double_click",
                "triple_click", "scroll")],
    ({"action": "left_click_drag"},
     'Missing "coordinate" or "start_coordinate" for left_click_drag.'),
    ({"action": "left_click_drag", "coordinate": [1, 2]},
     'Missing "coordinate" or "start_coordinate" for left_click_drag.'),
    ({"action": "scroll", "coordinate": [1, 2], "scroll_direction": "sideways"},
     "Invalid scroll direction: sideways"),
])
def test_table_400s(body: dict[str, object], message: str) -> None:
    with pytest.raises(ApiError) as e:
        _check(body)
    assert (e.value.status, e.value.message) == (400, message)


def test_defaults_and_mapping_in_the_plan() -> None:
    plan = _check({"action": "scroll", "coordinate": [100, 50], "scaled_width": 320,
                   "scaled_height": 240})
    assert (plan.point, plan.wheel_button, plan.wheel_clicks) == ((201, 101), 5, 3)
    plan = _check({"action": "scroll", "coordinate": [1, 1], "scroll_direction": "left",
                   "scroll_amount": -2})
    assert (plan.wheel_button, plan.wheel_clicks) == (6, 0)
    assert _check({"action": "hold_key", "text": "a"}).hold_seconds == 1.0
    assert _check({"action": "hold_key", "text": "a", "duration": 250}).hold_seconds == 0.25
    assert _check({"action": "screenshot", "scaled_width": 320}).declared == (320, 480)
    assert _check({"action": "left_mouse_down"}).point is None
    assert failure_message("left_click") == "Left click failed."
    assert failure_message("screenshot") == "Screenshot failed."


def test_screenshot_property_decodes_base64() -> None:
    assert DesktopActionResponse(screenshot_data="iVBORw==").screenshot == b"\x89PNG"
    assert DesktopActionResponse(output="x").screenshot is None
    with pytest.raises(ProtocolError):
        _ = DesktopActionResponse(screenshot_data="%%%").screenshot


# -- §11.3 multipart framing ------------------------------------------------------------------


def _multipart(boundary: str, video: bytes, thumb: bytes | None) -> bytes:
    body = recording_part_head(boundary, "video/mp4", first=True) + video
    if thumb is not None:
        body += recording_part_head(boundary, "image/jpeg", first=False) + thumb
    return body + recording_close(boundary)


def test_multipart_layout_is_go_style() -> None:
    body = _multipart("B", b"MP4", b"JPG")
    assert body == (b"--B\r\nContent-Type: video/mp4\r\n\r\nMP4"
                    b"\r\n--B\r\nContent-Type: image/jpeg\r\n\r\nJPG\r\n--B--\r\n")
    assert len(new_boundary()) == 60 and new_boundary() != new_boundary()
    assert recording_content_type("B") == "multipart/mixed; boundary=B"


@given(st.binary(max_size=2000), st.one_of(st.none(), st.binary(max_size=500)))
def test_split_recording_round_trips(video: bytes, thumb: bytes | None) -> None:
    boundary = new_boundary()
    body = _multipart(boundary, video, thumb)
    assert split_recording(body, recording_content_type(boundary)) == (video, thumb)
    quoted = f'multipart/mixed; charset=x; boundary="{boundary}"'
    assert split_recording(body, quoted) == (video, thumb)


def test_split_recording_rejects_bad_bodies() -> None:
    boundary = new_boundary()
    ct = recording_content_type(boundary)
    body = _multipart(boundary, b"video", b"thumb")
    for bad_body, bad_ct, what in [
        (body[:-12], ct, "before its closing delimiter"),   # truncated after the 200
        (body, "multipart/mixed", "no boundary"),
        (body, "application/json", "expected multipart/mixed"),
        (b"no parts here", ct, "no multipart delimiter"),
        (_multipart(boundary, b"", None).replace(b"video/mp4", b"text/plain"), ct,
         "no video/mp4 part"),
    ]:
        with pytest.raises(ProtocolError, match=what):
            split_recording(bad_body, bad_ct)


# -- command lines ----------------------------------------------------------------------------


def test_xvnc_command_listens_only_on_the_private_socket() -> None:
    cmd = xvnc_command("/usr/bin/Xvnc", displayfd=7, geometry=(640, 480),
                       rfb_socket="/d/vnc.sock", xauthority="/d/Xauthority")
    joined = " ".join(cmd)
    for part in ("-displayfd 7", "-geometry 640x480", "-depth 24", "-rfbunixpath /d/vnc.sock",
                 "-rfbunixmode 0600", "-rfbport -1", "-SecurityTypes None", "-AlwaysShared",
                 "-nolisten tcp", "-auth /d/Xauthority"):
        assert part in joined


def test_ffmpeg_command_finalises_a_faststart_mp4() -> None:
    cmd = ffmpeg_command("ffmpeg", display=":3", geometry=(641, 480), output="/r/video.mp4")
    joined = " ".join(cmd)
    for part in ("-f x11grab", "-video_size 641x480", "-i :3", "-c:v libx264",
                 "-movflags +faststart", "-y /r/video.mp4", "crop="):
        assert part in joined
    assert "crop=" not in " ".join(
        ffmpeg_command("ffmpeg", display=":3", geometry=(640, 480), output="/r/v.mp4"))


# -- a VNC viewer's input (RfbInputScanner) ---------------------------------------------------

_HANDSHAKE_38 = b"RFB 003.008\n" + b"\x01" + b"\x01"  # version, security None, shared
_WATCHING = (  # what a viewer sends that is not input
    b"\x00" + bytes(19)                                    # SetPixelFormat
    + b"\x02\x00\x00\x03" + bytes(12)                     # SetEncodings, 3 encodings
    + b"\x03\x01" + bytes(8)                                # FramebufferUpdateRequest
    + b"\x96\x01" + bytes(8)                                # EnableContinuousUpdates
    + b"\xf8" + bytes(7) + b"\x04" + b"sync"               # ClientFence, 4 payload bytes
    + b"\xfb\x00\x05\x00\x02\xd0\x02\x00" + bytes(32)  # SetDesktopSize, 2 screens
)
_INPUT = (
    b"\x04\x01\x00\x00\x00\x00\x00\x61"               # KeyEvent 'a' down
    + b"\x05\x00\x00\x10\x00\x20"                        # PointerEvent
    + b"\x06\x00\x00\x00\x00\x00\x00\x05hello"         # ClientCutText
    + b"\x06\x00\x00\x00\xff\xff\xff\xfc" + bytes(4)    # extended clipboard: length -4
    + b"\xff\x00\x00\x01" + bytes(8)                       # QEMU extended KeyEvent
)


def _scan(*pieces: bytes) -> tuple[int, RfbInputScanner]:
    s = RfbInputScanner()
    return sum(s.receive_data(p) for p in pieces), s


def test_rfb_scanner_counts_input_not_watching() -> None:
    stream = _HANDSHAKE_38 + _WATCHING + _INPUT + _WATCHING
    assert _scan(stream)[0] == 5
    assert _scan(_HANDSHAKE_38 + _WATCHING * 3)[0] == 0
    # whatever the pieces, the same count; an input message counts once its type byte is in
    for cut in range(1, len(stream)):
        n, s = _scan(stream[:cut], stream[cut:])
        assert n == 5 and not s.lost, cut
    first_key = len(_HANDSHAKE_38 + _WATCHING)
    assert _scan(stream[:first_key])[0] == 0
    assert _scan(stream[:first_key + 1])[0] == 1


def test_rfb_scanner_handshake_variants() -> None:
    # 3.3: the server picks the security type, the client sends none
    assert _scan(b"RFB 003.003\n\x01" + _WATCHING + _INPUT)[0] == 5
    # VncAuth: a 16-byte response before ClientInit
    assert _scan(b"RFB 003.008\n\x02" + bytes(16) + b"\x00" + _INPUT)[0] == 5


def test_rfb_scanner_skips_long_bodies_without_holding_them() -> None:
    s = RfbInputScanner()
    s.receive_data(_HANDSHAKE_38 + b"\x06\x00\x00\x00" + (50 << 20).to_bytes(4, "big"))
    for _ in range(50):  # 50 MiB of clipboard text in 1 MiB pieces
        assert s.receive_data(bytes(1 << 20)) in (0, 1)
    assert s.inputs == 1 and len(s._head) == 0
    assert s.receive_data(b"\x05\x00\x00\x00\x00\x00") == 1


def test_rfb_scanner_unknown_message_counts_everything_after() -> None:
    n, s = _scan(_HANDSHAKE_38 + _WATCHING + b"\x7f" + bytes(10))
    assert n == 1 and s.lost
    assert s.receive_data(b"\x03" + bytes(9)) == 1  # even an update request now counts
    assert _scan(b"RFB 003.008\n\x13")[1].lost  # VeNCrypt: not followed
