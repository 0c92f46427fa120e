"""Redis commands written directly in the Redis wire format (RESP2).

redis-py packs every argument in Python (about 1-2 µs each); a hot path that sends
thousands of arguments per round trip (the gateway's group commit, the worker's
per-chunk lookups) writes them here instead, with one ``%`` format per argument,
and sends the bytes with ``send_packed_command`` on a connection it holds.
"""

from __future__ import annotations

from collections.abc import Iterable

Arg = bytes | str | int


def bulk(value: bytes) -> bytes:
    """One argument (a RESP bulk string)."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _bytes(value: Arg) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def command(*args: Arg) -> bytes:
    return command_with(args, [])


def command_with(head: Iterable[Arg], tail: list[bytes]) -> bytes:
    """A command of the ``head`` arguments followed by the (many) ``tail`` arguments."""
    return command_packed(head, len(tail), b"".join([bulk(v) for v in tail]))


def command_packed(head: Iterable[Arg], count: int, packed: bytes) -> bytes:
    """A command of the ``head`` arguments followed by ``count`` arguments already
    written as bulk strings in ``packed`` (so a list sent twice is encoded once)."""
    first = [bulk(_bytes(a)) for a in head]
    return b"*%d\r\n%b%b" % (len(first) + count, b"".join(first), packed)
