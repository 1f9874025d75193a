"""``agentconn desktop``: screenshots, actions and recordings of the agent's desktop (§11).

    agentconn desktop screenshot WORKSPACE -o shot.png [--size WxH]
    agentconn desktop action WORKSPACE ACTION [--coordinate X,Y] [--text T] ...
    agentconn desktop record start WORKSPACE [--id UUID]       (prints the id)
    agentconn desktop record stop WORKSPACE UUID -o out.mp4 [--thumbnail t.jpg]

``-c FILE --agent-id ID`` instead of ``WORKSPACE`` reaches the agent through a wg-quick file
(see :mod:`~agentconn.cli.target`).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agentconn.cli.target import add_target_arguments, open_conn
from agentconn.proto.desktop import DesktopAction, ScrollDirection, split_recording

__all__ = ["add_parser", "arg_type", "parse_point", "parse_size", "run"]

T = TypeVar("T")


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` (e.g. ``1280x720``); ValueError names the problem."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) <= 0 or int(h) <= 0:
        raise ValueError(f"invalid size {text!r}: expected WIDTHxHEIGHT, e.g. 1280x720")
    return int(w), int(h)


def parse_point(text: str) -> tuple[int, int]:
    """``X,Y`` (e.g. ``100,200``); ValueError names the problem."""
    x, sep, y = text.partition(",")
    try:
        if not sep:
            raise ValueError
        return int(x), int(y)
    except ValueError:
        raise ValueError(f"invalid coordinate {text!r}: expected X,Y, e.g. 100,200") from None


def arg_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` for argparse: its ValueError text becomes the usage error shown."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    desktop = sub.add_parser("desktop", help="screenshots, actions and recordings of the "
                                             "agent's desktop")
    what = desktop.add_subparsers(dest="desktop_command", required=True)

    shot = what.add_parser("screenshot", help="save a PNG screenshot")
    add_target_arguments(shot)
    shot.add_argument("-o", "--output", required=True, help="PNG file to write")
    shot.add_argument("--size", type=arg_type(parse_size), metavar="WxH",
                      help="scale to this size (default: the desktop's own)")

    action = what.add_parser("action", help="perform one action (agent-api.md §11.2)")
    add_target_arguments(action)
    action.add_argument("action", choices=[a.value for a in DesktopAction])
    action.add_argument("--coordinate", type=arg_type(parse_point), metavar="X,Y")
    action.add_argument("--start-coordinate", type=arg_type(parse_point), metavar="X,Y",
                        help="drag start (left_click_drag)")
    action.add_argument("--text", help="key combo (xdotool syntax) or text to type")
    action.add_argument("--duration", type=int, metavar="MS", help="hold_key duration")
    action.add_argument("--scroll-amount", type=int, metavar="N")
    action.add_argument("--scroll-direction", choices=[d.value for d in ScrollDirection])
    action.add_argument("--size", type=arg_type(parse_size), metavar="WxH",
                        help="the declared screen size the coordinates refer to")
    action.add_argument("-o", "--output", help="where a screenshot's PNG goes")

    record = what.add_parser("record", help="record the desktop to MP4")
    step = record.add_subparsers(dest="record_command", required=True)
    start = step.add_parser("start", help="start recording; prints the recording id")
    add_target_arguments(start)
    start.add_argument("--id", type=uuid.UUID, help="recording id (default: a new one)")
    stop = step.add_parser("stop", help="stop a recording and save it")
    add_target_arguments(stop)
    stop.add_argument("id", type=uuid.UUID, help="the recording id")
    stop.add_argument("-o", "--output", required=True, help="MP4 file to write")
    stop.add_argument("--thumbnail", help="JPEG file for the thumbnail (if the agent sent one)")


async def run(args: argparse.Namespace) -> int:
    async with await open_conn(args) as conn:
        if args.desktop_command == "screenshot":
            width, height = args.size or (None, None)
            resp = await conn.execute_desktop_action(
                DesktopAction.SCREENSHOT, scaled_width=width, scaled_height=height)
            Path(args.output).write_bytes(resp.screenshot or b"")
            print(f"{args.output}: {resp.screenshot_width}x{resp.screenshot_height} PNG")
            return 0
        if args.desktop_command == "action":
            width, height = args.size or (None, None)
            resp = await conn.execute_desktop_action(
                args.action, coordinate=args.coordinate, start_coordinate=args.start_coordinate,
                text=args.text, duration=args.duration, scroll_amount=args.scroll_amount,
                scroll_direction=args.scroll_direction, scaled_width=width,
                scaled_height=height)
            png = resp.screenshot
            if png is not None:
                if not args.output:
                    print("agentconn desktop action screenshot: give -o FILE for the PNG",
                          file=sys.stderr)
                    return 2
                Path(args.output).write_bytes(png)
                print(f"{args.output}: {resp.screenshot_width}x{resp.screenshot_height} PNG")
            else:
                print(resp.output)
            return 0
        if args.record_command == "start":
            rid = args.id or uuid.uuid4()
            await conn.start_desktop_recording(rid)
            print(rid)
            return 0
        body, content_type = await conn.stop_desktop_recording(args.id)
        video, thumbnail = split_recording(body, content_type)
        Path(args.output).write_bytes(video)
        print(f"{args.output}: {len(video)} bytes of MP4")
        if args.thumbnail:
            if thumbnail is None:
                print("agentconn desktop record stop: the agent sent no thumbnail",
                      file=sys.stderr)
            else:
                Path(args.thumbnail).write_bytes(thumbnail)
                print(f"{args.thumbnail}: {len(thumbnail)} bytes of JPEG")
        return 0
