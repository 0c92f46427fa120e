"""Where a webhook may be sent: the host resolved and every address checked (I/O around
the rules of :mod:`shared.webhooks`).

The admin API checks at create and update (:func:`check_target`); the notifier checks at
every connection, through :class:`CheckedResolver`: aiohttp connects to exactly the
addresses the resolver returned, so a DNS answer that changed to a private address
since the endpoint was created is refused, and there is no second lookup between the
check and the connection. An address literal never reaches a resolver, so the notifier
checks it itself (:func:`literal_refused`).
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from shared.codes import Code
from shared.errors import ApiError
from shared.webhooks import IpAddress, Target, check_url, private_error, refused_address


class RefusedAddress(OSError):
    """The endpoint's host is (or resolves to) an address webhooks may not go to."""


async def check_target(url: object, allow_private: bool) -> Target:
    """``url`` checked, its host resolved and (unless allowed) refused when any address
    it has is loopback, private or link-local."""
    target = check_url(url)
    if allow_private:
        return target
    if target.literal is not None:
        addresses: list[IpAddress] = [target.literal]
    else:
        resolver = ThreadedResolver()
        try:
            found = await resolver.resolve(target.host, target.port, socket.AF_UNSPEC)
        except OSError as e:
            raise ApiError(
                Code.INVALID_WEBHOOK_URL,
                f"url's host {target.host} does not resolve ({e})",
                pointer="/url",
            ) from e
        finally:
            await resolver.close()
        addresses = [ipaddress.ip_address(r["host"]) for r in found]
    bad = refused_address(addresses)
    if bad is not None:
        raise private_error(target.host, bad)
    return target


def literal_refused(target: Target) -> IpAddress | None:
    if target.literal is None:
        return None
    return refused_address([target.literal])


class CheckedResolver(AbstractResolver):
    """Resolves as aiohttp does by default, and refuses (an OSError, a failed attempt)
    a host with any address webhooks may not go to."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        bad = refused_address([ipaddress.ip_address(r["host"]) for r in found])
        if bad is not None:
            raise RefusedAddress(f"{host} resolves to {bad}, a private address (refused)")
        return found

    async def close(self) -> None:
        await self._inner.close()
