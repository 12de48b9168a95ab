"""Client address allow and deny lists (sans-IO).

Rules name networks as CIDRs or single addresses, IPv4 or IPv6, read as
`meshgate.core.clientip.parse_networks` reads trusted proxies: a network of
IPv4-mapped IPv6 addresses is the IPv4 network, and addresses are compared as
IPv4 when mapped. An IPv6 network never holds an IPv4 address ("::/0" does
not cover IPv4 clients). The address to check is usually the one
`meshgate.core.clientip.client_ip` found behind the trusted proxies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from ipaddress import IPv4Network, ip_network

from meshgate.core.clientip import Network, parse_address, parse_networks

# Decisions remembered per rule set: a hit is one dict lookup, a miss about
# 2 µs (parsing the address) plus one set lookup per distinct prefix length.
_CACHE_SIZE = 4096
# Networks `describe` names per list before it counts the rest.
_DESCRIBE_MAX = 5

# One family's networks: (mask, network numbers) per prefix length.
_Table = tuple[tuple[int, frozenset[int]], ...]


def _parse(kind: str, entries: Sequence[str]) -> tuple[Network, ...]:
    networks: list[Network] = []
    for i, entry in enumerate(entries):
        try:
            networks += parse_networks((entry,))
        except ValueError:
            try:
                loose = ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"ip rules {kind} entry {i} ({entry!r}) is not an IP address or CIDR network"
                ) from None
            raise ValueError(
                f"ip rules {kind} entry {i} ({entry!r}) has host bits set: did you mean '{loose}'?"
            ) from None
    return tuple(networks)


def _table(networks: Sequence[Network], bits: int) -> _Table:
    by_length: dict[int, set[int]] = {}
    for network in networks:
        by_length.setdefault(network.prefixlen, set()).add(int(network.network_address))
    full = (1 << bits) - 1
    return tuple(
        (full ^ (full >> length), frozenset(numbers))
        for length, numbers in sorted(by_length.items())
    )


def _tables(networks: Sequence[Network]) -> tuple[_Table, _Table]:
    """The IPv4 and the IPv6 table of `networks`."""
    v4 = [n for n in networks if isinstance(n, IPv4Network)]
    v6 = [n for n in networks if not isinstance(n, IPv4Network)]
    return _table(v4, 32), _table(v6, 128)


def _holds(tables: tuple[_Table, _Table], version: int, number: int) -> bool:
    return any(number & mask in numbers for mask, numbers in tables[version == 6])


def _decide(
    allow: tuple[_Table, _Table] | None, deny: tuple[_Table, _Table], fail_open: bool, text: str
) -> bool:
    parsed = parse_address(text)  # IPv4-mapped IPv6 comes back as IPv4
    if parsed is None:
        return fail_open
    address = parsed[0]
    version, number = address.version, int(address)
    if _holds(deny, version, number):
        return False
    return allow is None or _holds(allow, version, number)


def _names(networks: Sequence[Network]) -> str:
    names = ", ".join(str(n) for n in networks[:_DESCRIBE_MAX])
    if len(networks) > _DESCRIBE_MAX:
        names += f" and {len(networks) - _DESCRIBE_MAX} more"
    return names


class IpRules:
    """Which client addresses may pass: deny wins over allow.

    With no allow list every address not denied passes; with one, only the
    addresses in it that are not denied. Text that is not an IP address (e.g.
    a Unix socket peer) passes only when there are no rules at all: any rule
    means the filter fails closed.
    """

    __slots__ = ("_allow", "_decide", "_deny")

    _allow: tuple[Network, ...]
    _decide: Callable[[str], bool]
    _deny: tuple[Network, ...]

    @classmethod
    def build(cls, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> IpRules:
        """Rules from CIDRs or single addresses; raises ValueError naming the bad entry."""
        self = cls.__new__(cls)
        self._allow = _parse("allow", allow)
        self._deny = _parse("deny", deny)
        decide = partial(
            _decide,
            _tables(self._allow) if self._allow else None,
            _tables(self._deny),
            not (self._allow or self._deny),
        )
        self._decide = lru_cache(maxsize=_CACHE_SIZE)(decide)
        return self

    def permits(self, address: str) -> bool:
        """True when the client at `address` (IPv4 or IPv6 text) may pass."""
        return self._decide(address)

    def describe(self) -> str:
        """One line for `meshgate explain`, e.g. "allow 10.0.0.0/8; deny 10.9.0.0/16"."""
        allow = f"allow {_names(self._allow)}" if self._allow else "allow any address"
        deny = f"deny {_names(self._deny)}" if self._deny else "deny none"
        return f"{allow}; {deny}"
