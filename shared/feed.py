"""Change feed positions and cursors: pure, values in and values out.

A position is ``(txid, id)``: the id of the transaction that wrote a history row
(``resource_changes.txid``) and the row's own id. The feed lists rows in position order
and a cursor stands for "every row at or before this position is behind you" (see
:mod:`shared.pg.feed` for why that set never grows behind a cursor).

A cursor is opaque text: base64url (unpadded) of a version byte and the two numbers,
big-endian. It is not signed: it names a position, not a permission (what a caller may
read is decided by its credentials on every request), and it must stay valid across
restarts and admin-token rotations for as long as the history row exists.
"""

from __future__ import annotations

import base64
import binascii
import struct

Position = tuple[int, int]

VERSION = 1
_LAYOUT = struct.Struct(">BQq")
#: before every row: rows from before migration 0009 read txid 0, and ids start at 1
START: Position = (0, 0)
#: the largest row id: (t, LAST_ID) is "every row of transaction t and before"
LAST_ID = (1 << 63) - 1
MAX_TXID = (1 << 64) - 1


class BadCursor(ValueError):
    """Text that is not a feed cursor."""


def encode(pos: Position) -> str:
    raw = _LAYOUT.pack(VERSION, pos[0], pos[1])
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode(text: str) -> Position:
    """The position ``text`` holds, or :class:`BadCursor`."""
    if not text or len(text) > 64 or not text.isascii():
        raise BadCursor("not a cursor")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), b"-_", validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadCursor("not base64url") from e
    if len(raw) != _LAYOUT.size:
        raise BadCursor("wrong length")
    version, txid, row_id = _LAYOUT.unpack(raw)
    if version != VERSION:
        raise BadCursor(f"unknown cursor version {version}")
    if row_id < 0:
        raise BadCursor("negative row id")
    return txid, row_id


def settled(after: Position, xmin: int) -> Position:
    """Where a reader that has seen every matching row before ``xmin`` stands: past every
    row with txid < xmin (those are final), and never behind where it was. A filtered
    reader thus moves past rows it does not want instead of scanning them again."""
    return max(after, (max(xmin - 1, 0), LAST_ID))
