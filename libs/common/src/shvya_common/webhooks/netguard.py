"""Which addresses an outbound request may reach: the SSRF guard's address policy.

A webhook URL is chosen by a customer, so without a guard it could make the platform call its
own internals (a database port, a cloud metadata service at 169.254.169.254, an admin API on
loopback). Only globally routable unicast addresses pass. Addresses that carry an IPv4 address
inside an IPv6 one (IPv4-mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are
judged by the IPv4 address inside, since that is where the packet ends up; the deprecated
IPv4-compatible `::a.b.c.d`, local-use NAT64 (`64:ff9b:1::/48`) and Teredo are refused
outright. The lists are explicit rather than only `ipaddress.is_global`, whose tables differ
between Python releases.

`check_address` judges one address; `resolve_public` resolves a host and refuses it when *any*
of its addresses is not public, returning them so the caller connects to exactly those (no
second lookup, so no DNS-rebinding gap between check and connect).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Each blocked range with the words a refusal uses for it.
_V4_BLOCKED = tuple(
    (ipaddress.IPv4Network(net), label)
    for net, label in (
        ("0.0.0.0/8", "in 0.0.0.0/8 ('this network'; 0.0.0.0 reaches the local host)"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address (cloud metadata lives there)"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)
_V6_BLOCKED = tuple(
    (ipaddress.IPv6Network(net), label)
    for net, label in (
        ("::1/128", "a loopback address"),
        ("::/128", "the unspecified address"),
        ("::/96", "an IPv4-compatible address (deprecated)"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/32", "a Teredo address"),
        ("2001:db8::/32", "a documentation address"),
        ("2001:10::/28", "an ORCHID address"),
        ("fc00::/7", "a unique local address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class AddressRefused(Exception):
    """A host that resolves to an address the guard does not allow, or does not resolve."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries to (IPv4-mapped, NAT64, 6to4), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def refusal(address: IPAddress) -> str | None:
    """Why `address` may not be reached, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (zone) address"
        inner = embedded_ipv4(address)
        if inner is not None:
            why = refusal(inner)
            return f"carrying {inner}, {why}" if why else None
        blocked: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]
        blocked = _V6_BLOCKED
    else:
        blocked = _V4_BLOCKED
    for net, label in blocked:
        if address in net:
            return label
    if not address.is_global:
        return "not a globally routable address"
    return None


def check_address(address: IPAddress | str) -> None:
    """Raise AddressRefused unless `address` is a public unicast address."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    why = refusal(ip)
    if why is not None:
        raise AddressRefused(f"{ip} is {why}")


def literal_address(host: str) -> IPAddress | None:
    """The address when `host` is an IP literal (`[::1]` and `::1` alike), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to for a TCP connection, in the resolver's order."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise AddressRefused(f"cannot resolve {host}: {err}") from err
    found: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]))
        if ip not in found:
            found.append(ip)
    if not found:
        raise AddressRefused(f"{host} has no address")
    return found


async def resolve_public(host: str, port: int, *, allow_private: bool = False) -> list[IPAddress]:
    """`host`'s addresses, refused as a whole when any of them is not public (unless
    `allow_private`, for tests and air-gapped installs)."""
    addresses = await resolve(host, port)
    if not allow_private:
        for ip in addresses:
            why = refusal(ip)
            if why is not None:
                raise AddressRefused(f"{host} resolves to {ip}, {why}")
    return addresses
