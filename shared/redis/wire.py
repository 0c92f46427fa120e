"""Redis commands in the wire protocol, packed by hiredis.

redis-py packs every argument in Python (about 1-2 µs each); hot paths that send
thousands of arguments per round trip (the gateway's group commit, the worker's
commits and per-chunk lookups) pack them here with hiredis' C packer and send the
bytes on a connection they hold (:class:`shared.redis.conn.HeldConnection`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hiredis import pack_command

Arg = bytes | str | int | float | memoryview

__all__ = ["Arg", "Packed", "command", "command_with", "commands"]


def command(*args: Arg) -> bytes:
    """One command: ``command("HSET", key, field, value)``."""
    out: bytes = pack_command(args)  # type: ignore[arg-type]
    return out


def commands(cmds: Iterable[Sequence[Arg]]) -> bytes:
    """Several commands, one after the other (their replies come in the same order)."""
    return b"".join([pack_command(tuple(c)) for c in cmds])  # type: ignore[arg-type]


class Packed:
    """Arguments packed once and sent in several commands (a chunk's ids are looked up in
    two hashes with one encoding)."""

    __slots__ = ("body", "count")

    def __init__(self, args: Sequence[Arg]) -> None:
        packed = pack_command(tuple(args)) if args else b"*0\r\n"  # type: ignore[arg-type]
        self.count = len(args)
        self.body = packed[packed.index(b"\r\n") + 2 :]  # without the "*<count>" header


def command_with(head: Sequence[Arg], tail: Packed) -> bytes:
    """The command ``*head, *tail`` (``tail`` packed beforehand)."""
    packed = pack_command(tuple(head))  # type: ignore[arg-type]
    start = packed.index(b"\r\n") + 2
    return b"*%d\r\n%b%b" % (len(head) + tail.count, packed[start:], tail.body)
