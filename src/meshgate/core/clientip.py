"""The client address behind trusted proxies (sans-IO), e.g. to rate-limit by IP.

`X-Forwarded-For` is believed only as far as it was written by proxies we trust:
each trusted hop appends the address it received the request from, so reading
the list from the right, the first address that is not a trusted proxy is the
client. Whatever is left of it was written by that client and proves nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address

_MAPPED = IPv6Network("::ffff:0:0/96")


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """The networks of `cidrs` ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7" for one host).

    Surrounding spaces are ignored. A network of IPv4-mapped IPv6 addresses
    (within ::ffff:0:0/96) becomes the IPv4 network, since addresses are compared
    as IPv4. Raises ValueError naming the bad entry, also for host bits set
    ("10.0.0.1/8"), which usually means a typo.
    """
    networks: list[Network] = []
    for i, cidr in enumerate(cidrs):
        text = cidr.strip()
        try:
            network = ip_network(text)
        except ValueError:
            try:
                loose = ip_network(text, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted network {i} ({cidr!r}) is not an IP address or CIDR network"
                ) from None
            raise ValueError(
                f"trusted network {i} ({cidr!r}) has host bits set: did you mean '{loose}'?"
            ) from None
        if isinstance(network, IPv6Network) and network.subnet_of(_MAPPED):
            network = IPv4Network(
                (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
            )
        networks.append(network)
    return tuple(networks)


# parsing and printing are most of the work (2 µs for an IPv4 address, 3.5 µs for
# IPv6) and the same few proxy and client addresses come again and again
@lru_cache(maxsize=4096)
def parse_address(text: str) -> tuple[Address, str] | None:
    """The address in `text` (IPv4 if mapped) and its canonical text; None if not one."""
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, str(address)


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)


def client_ip(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The address to rate-limit for a request from `peer` (the socket's address).

    With no trusted networks, or a peer that is not trusted, that is `peer`, as
    given. Otherwise the `X-Forwarded-For` values (each a comma-separated list;
    all values in order form one list; empty elements skipped) are read from the
    right, skipping trusted addresses, and the first untrusted one is the
    client. If every address is trusted, the leftmost is. An entry that is not
    an IP address (garbage, or an address with a port) stops the walk: the
    trusted address read just before it is the answer, the peer if there is none.
    IPv4-mapped IPv6 addresses are compared as IPv4. Addresses taken from the
    header are returned in canonical form (mapped ones as IPv4).
    """
    if not trusted:
        return peer
    parsed = parse_address(peer)
    if parsed is None or not _trusted(parsed[0], trusted):
        return peer
    found = peer
    entries = [entry.strip() for value in forwarded_for for entry in value.split(",")]
    for entry in reversed(entries):
        if not entry:
            continue
        parsed = parse_address(entry)
        if parsed is None:
            return found
        address, found = parsed
        if not _trusted(address, trusted):
            return found
    return found
