"""The SSRF guard: which addresses a url source may connect to.

The guard runs where the connection is made, on the address itself, never on a name checked
earlier: ``GuardedResolver`` checks every address a name resolves to and hands aiohttp exactly
those (aiohttp connects to what its resolver returns, so there is no second lookup for DNS
rebinding to answer differently), and ``guarded_socket`` checks the socket address once more as the
socket is created, which also covers IP-literal hosts (aiohttp does not resolve those).

Refused unless a setting allows them (imgproxy's IMGPROXY_ALLOW_*_SOURCE_ADDRESSES):

- loopback: 127/8, ::1, and the unspecified 0.0.0.0/8 and :: (connecting to them reaches this
  host); IMAGESVC_ALLOW_LOOPBACK_SOURCE_ADDRESSES;
- private: 10/8, 172.16/12, 192.168/16, 100.64/10 (CGNAT), fc00::/7 (ULA), fec0::/10 (old
  site-local), 64:ff9b:1::/48 (local-use NAT64); IMAGESVC_ALLOW_PRIVATE_SOURCE_ADDRESSES;
- link-local: 169.254/16 (the cloud metadata address 169.254.169.254 among them), fe80::/10;
  IMAGESVC_ALLOW_LINK_LOCAL_SOURCE_ADDRESSES.

Always refused: multicast (224/4, ff00::/8), broadcast and reserved (240/4), and every other
address that is not globally reachable (documentation, benchmarking, IETF protocol ranges, ...).

IPv6 forms that carry an IPv4 address are judged by that address: IPv4-mapped (::ffff:a.b.c.d),
IPv4-compatible (::a.b.c.d), IPv4-translated (::ffff:0:a.b.c.d), NAT64 (64:ff9b::a.b.c.d), 6to4
(2002:aabb:ccdd::), Teredo (2001::/32, server and client) and ISATAP (…:5efe:a.b.c.d). Python's
``ipaddress.is_global`` alone misses several of these (see the reference's "Security" part).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK = "loopback"
PRIVATE = "private"
LINK_LOCAL = "link_local"
MULTICAST = "multicast"
RESERVED = "reserved"

_V4_PRIVATE = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_V4_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_V4_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_V6_ULA = ipaddress.IPv6Network("fc00::/7")
_V6_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
_V6_LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")
_V6_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V6_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_V6_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_V6_COMPATIBLE = ipaddress.IPv6Network("::/96")


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which of the allowable categories a deployment lets url sources connect to."""

    allow_loopback: bool = False
    allow_private: bool = False
    allow_link_local: bool = False

    @classmethod
    def from_settings(cls, settings) -> AddressPolicy:
        return cls(
            allow_loopback=settings.allow_loopback_source_addresses,
            allow_private=settings.allow_private_source_addresses,
            allow_link_local=settings.allow_link_local_source_addresses,
        )

    def allows(self, category: str | None) -> bool:
        if category is None:
            return True
        return {
            LOOPBACK: self.allow_loopback,
            PRIVATE: self.allow_private,
            LINK_LOCAL: self.allow_link_local,
        }.get(category, False)


class AddressRefused(OSError):
    """A url source was about to connect to an address the guard refuses.

    An OSError so that aiohttp passes it up as the cause of its connector error; ``str()`` never
    names the address (it may be an internal one): only ``category`` says what kind it was."""

    def __init__(self, category: str) -> None:
        super().__init__(f"the source resolves to a {category.replace('_', '-')} address")
        self.category = category


def parse_address(text: str) -> IPAddress:
    """An address as a resolver or socket reports it (an IPv6 zone, ``%eth0``, dropped)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, by the transition mechanisms that embed one;
    empty for a plain IPv6 address."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _V6_TRANSLATED or ip in _V6_NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip in _V6_COMPATIBLE and int(ip) > 1:  # ::a.b.c.d, not :: nor ::1
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [server, client]
    # ISATAP: interface identifier 0000:5efe or 0200:5efe, then the IPv4 address.
    if (int(ip) >> 32) & 0xFDFFFFFF == 0x00005EFE:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return []


def _category_v4(ip: ipaddress.IPv4Address) -> str | None:
    if ip.is_loopback or ip in _V4_THIS_NETWORK:
        return LOOPBACK
    if ip.is_link_local:
        return LINK_LOCAL
    if ip.is_multicast:
        return MULTICAST
    if ip in _V4_CGNAT or any(ip in net for net in _V4_PRIVATE):
        return PRIVATE
    if not ip.is_global:  # broadcast, 240/4, documentation, benchmarking, 192.0.0/24, ...
        return RESERVED
    return None


_SEVERITY = (MULTICAST, RESERVED, LINK_LOCAL, PRIVATE, LOOPBACK)


def category(ip: IPAddress) -> str | None:
    """The refusable category of ``ip``; None for a public address."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _category_v4(ip)
    embedded = embedded_ipv4(ip)
    if embedded:
        found = [c for c in map(_category_v4, embedded) if c is not None]
        # Several (Teredo's server and client): the one no setting can allow first.
        return min(found, key=_SEVERITY.index) if found else None
    if ip.is_unspecified or ip.is_loopback:
        return LOOPBACK
    if ip in _V6_LINK_LOCAL:
        return LINK_LOCAL
    if ip.is_multicast:
        return MULTICAST
    if ip in _V6_ULA or ip in _V6_SITE_LOCAL or ip in _V6_NAT64_LOCAL:
        return PRIVATE
    if not ip.is_global:  # 2001:db8::/32, 100::/64, 2001::/23, ...
        return RESERVED
    return None


def check(address: str, policy: AddressPolicy) -> None:
    """Raise AddressRefused unless ``policy`` lets a url source connect to ``address``."""
    try:
        ip = parse_address(address)
    except ValueError:
        raise AddressRefused(RESERVED) from None  # not an address at all: never connect
    found = category(ip)
    if not policy.allows(found):
        raise AddressRefused(found)


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` (getaddrinfo in a thread by default) and refuses the name when any
    of its addresses is refused; the addresses returned are the ones aiohttp connects to."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check(result["host"], self._policy)
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket_factory(policy: AddressPolicy):
    """A socket factory for aiohttp's connector: the last check, on the very address the socket
    is about to connect to."""

    def create(addr_info) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        check(str(sockaddr[0]), policy)
        return socket.socket(family=family, type=type_, proto=proto)

    return create
