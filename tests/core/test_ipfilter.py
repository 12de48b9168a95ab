"""Tests of the client address allow and deny lists (meshgate.core.ipfilter)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.ipfilter import IpRules

OFFICE = IpRules.build(
    allow=["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::ffff:198.51.100.0/120"],
    deny=["10.9.0.0/16", "10.1.2.3/32", "2001:db8:bad::/48", "2001:db8::dead/128"],
)
DENY_ONLY = IpRules.build(deny=["203.0.113.0/24", "2001:db8::/32"])
NONE = IpRules.build()
MAPPED = IPv6Network("::ffff:0:0/96")


# --------------------------------------------------------------------------- build


@pytest.mark.parametrize(
    ("allow", "deny", "message"),
    [
        (["10.0.0.0/8", "office"], [], r"ip rules allow entry 1 \('office'\) is not an IP address"),
        (
            [],
            ["10.0.0.1/8"],
            r"ip rules deny entry 0 \('10\.0\.0\.1/8'\) has host bits set: "
            r"did you mean '10\.0\.0\.0/8'\?",
        ),
        ([], ["2001:db8::/32", "2001:db8::1/32"], r"deny entry 1 .* did you mean '2001:db8::/32'"),
        ([""], [], r"allow entry 0 \(''\) is not"),
        (["10.0.0.0/33"], [], r"allow entry 0 \('10\.0\.0\.0/33'\) is not"),
        (["10.0.0.0/8, 10.1.0.0/16"], [], r"is not an IP address"),
        (["10.0.0.1:80"], [], r"is not an IP address"),
    ],
)
def test_bad_entries_are_named(allow: list[str], deny: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IpRules.build(allow=allow, deny=deny)


def test_describe() -> None:
    assert NONE.describe() == "allow any address; deny none"
    assert DENY_ONLY.describe() == "allow any address; deny 203.0.113.0/24, 2001:db8::/32"
    assert IpRules.build(allow=[" ::ffff:10.0.0.0/104 ", "192.0.2.7"]).describe() == (
        "allow 10.0.0.0/8, 192.0.2.7/32; deny none"
    )
    many = IpRules.build(allow=[f"10.0.{i}.0/24" for i in range(8)])
    assert many.describe() == (
        "allow 10.0.0.0/24, 10.0.1.0/24, 10.0.2.0/24, 10.0.3.0/24, 10.0.4.0/24 and 3 more; "
        "deny none"
    )


# --------------------------------------------------------------------------- permits


@pytest.mark.parametrize(
    ("rules", "address", "expected"),
    [
        # allow list
        (OFFICE, "10.0.0.1", True),
        (OFFICE, "10.255.255.255", True),
        (OFFICE, "11.0.0.0", False),
        (OFFICE, "192.0.2.7", True),  # a single address is a /32
        (OFFICE, "192.0.2.6", False),
        (OFFICE, "192.0.2.8", False),
        (OFFICE, "203.0.113.7", False),
        # deny inside allow: deny wins
        (OFFICE, "10.9.0.0", False),
        (OFFICE, "10.9.255.255", False),
        (OFFICE, "10.8.255.255", True),
        (OFFICE, "10.10.0.0", True),
        (OFFICE, "10.1.2.3", False),
        (OFFICE, "10.1.2.4", True),
        # IPv6
        (OFFICE, "2001:db8::1", True),
        (OFFICE, "2001:DB8:0:0::1", True),
        (OFFICE, "2001:db9::1", False),
        (OFFICE, "2001:db8:bad::1", False),
        (OFFICE, "2001:db8:bad:ffff:ffff:ffff:ffff:ffff", False),
        (OFFICE, "2001:db8:bae::", True),
        (OFFICE, "2001:db8::dead", False),  # /128
        (OFFICE, "2001:db8::deae", True),
        (OFFICE, "fe80::1%eth0", False),
        # IPv4-mapped IPv6 is IPv4, both ways
        (OFFICE, "::ffff:10.0.0.1", True),
        (OFFICE, "::ffff:10.9.1.1", False),
        (OFFICE, "::ffff:11.0.0.1", False),
        (OFFICE, "198.51.100.200", True),  # allowed as ::ffff:198.51.100.0/120
        (OFFICE, "::ffff:198.51.100.200", True),
        (OFFICE, "198.51.101.1", False),
        # garbage: refused when there are rules
        (OFFICE, "", False),
        (OFFICE, "garbage", False),
        (OFFICE, "10.0.0.1:4711", False),
        (OFFICE, " 10.0.0.1", False),
        (OFFICE, "[2001:db8::1]", False),
        (OFFICE, "unix:/run/meshgate.sock", False),
        # deny only: everything else passes
        (DENY_ONLY, "203.0.113.1", False),
        (DENY_ONLY, "::ffff:203.0.113.1", False),
        (DENY_ONLY, "203.0.114.1", True),
        (DENY_ONLY, "2001:db8:1::1", False),
        (DENY_ONLY, "2001:db9::1", True),
        (DENY_ONLY, "10.0.0.1", True),
        (DENY_ONLY, "garbage", False),  # fail closed
        # no rules: everything passes, even what is not an address
        (NONE, "10.0.0.1", True),
        (NONE, "2001:db8::1", True),
        (NONE, "garbage", True),
        (NONE, "", True),
    ],
)
def test_permits(rules: IpRules, address: str, expected: bool) -> None:
    assert rules.permits(address) is expected
    assert rules.permits(address) is expected  # again, from the cache


@pytest.mark.parametrize(
    ("allow", "deny", "address", "expected"),
    [
        # IPv4 and IPv6 networks never hold the other family
        (["::/0"], [], "10.0.0.1", False),
        (["::/0"], [], "::ffff:10.0.0.1", False),
        (["::/0"], [], "2001:db8::1", True),
        (["0.0.0.0/0"], [], "2001:db8::1", False),
        (["0.0.0.0/0"], [], "::ffff:10.0.0.1", True),
        ([], ["0.0.0.0/0"], "2001:db8::1", True),
        ([], ["0.0.0.0/0"], "10.0.0.1", False),
        ([], ["::/0"], "10.0.0.1", True),
        # deny everything wins over any allow
        (["10.0.0.0/8"], ["0.0.0.0/0"], "10.0.0.1", False),
        # a deny list holding the whole allow list
        (["192.0.2.0/28"], ["192.0.2.0/24"], "192.0.2.1", False),
        # /32 and /128 hold exactly one address
        (["192.0.2.1/32"], [], "192.0.2.1", True),
        (["192.0.2.1/32"], [], "192.0.2.0", False),
        (["2001:db8::1/128"], [], "2001:db8::1", True),
        (["2001:db8::1/128"], [], "2001:db8::", False),
        (["2001:db8::1/128"], [], "2001:db8::2", False),
        # /0 and single-host networks mixed in one list
        (["192.0.2.1", "10.0.0.0/8", "0.0.0.0/0"], ["10.0.0.5"], "8.8.8.8", True),
        (["192.0.2.1", "10.0.0.0/8", "0.0.0.0/0"], ["10.0.0.5"], "10.0.0.5", False),
        # a mapped single address
        (["::ffff:192.0.2.1"], [], "192.0.2.1", True),
    ],
)
def test_permits_families_and_prefix_lengths(
    allow: list[str], deny: list[str], address: str, expected: bool
) -> None:
    assert IpRules.build(allow=allow, deny=deny).permits(address) is expected


def test_cache_is_bounded_and_per_rule_set() -> None:
    rules = IpRules.build(allow=["10.0.0.0/8"])
    other = IpRules.build(deny=["10.0.0.0/8"])
    for i in range(10_000):
        address = str(ip_address(0x0A000000 + i))
        assert rules.permits(address)
        assert not other.permits(address)
    info = rules._decide.cache_info()  # type: ignore[attr-defined]
    assert info.currsize <= info.maxsize < 10_000


# --------------------------------------------------------------------------- properties


def _network(text: str) -> IPv4Network | IPv6Network:
    """The network of `text`, a mapped IPv6 one as IPv4."""
    network = ip_network(text)
    if isinstance(network, IPv6Network) and network.subnet_of(MAPPED):
        return IPv4Network(
            (int(network.network_address) - int(MAPPED.network_address), network.prefixlen - 96)
        )
    return network


v4_networks = st.builds(
    lambda n, length: str(IPv4Network((n, length), strict=False)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6_networks = st.builds(
    lambda n, length: str(IPv6Network((n, length), strict=False)),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
networks = st.one_of(v4_networks, v6_networks)


def _inside(network: str) -> st.SearchStrategy[str]:
    """Addresses in `network` as the rules see it: a mapped network holds IPv4 addresses,
    and IPv4 ones are also written mapped; an IPv6 network holding the mapped range
    (such as ::/0) does not hold them, since they are IPv4 addresses."""
    net = _network(network)
    first, size = int(net.network_address), net.num_addresses
    if isinstance(net, IPv4Network):
        v4 = st.integers(0, size - 1).map(lambda i: str(IPv4Address(first + i)))
        return st.one_of(v4, v4.map(lambda a: f"::ffff:{a}"))
    v6 = st.integers(0, size - 1).map(lambda i: IPv6Address(first + i))
    return v6.filter(lambda a: a.ipv4_mapped is None).map(str)


@st.composite
def denied_address(draw: st.DrawFn) -> tuple[list[str], list[str], str]:
    allow = draw(st.lists(networks, max_size=5))
    deny = draw(st.lists(networks, min_size=1, max_size=5))
    address = draw(_inside(draw(st.sampled_from(deny))))
    return allow, deny, address


@settings(max_examples=300, deadline=None)
@given(case=denied_address())
def test_an_address_in_a_deny_network_is_never_permitted(
    case: tuple[list[str], list[str], str],
) -> None:
    allow, deny, address = case
    assert not IpRules.build(allow=allow, deny=deny).permits(address)


def _reference(allow: list[str], deny: list[str], address: str) -> bool:
    parsed = ip_address(address)
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    if any(parsed in _network(n) for n in deny):
        return False
    return not allow or any(parsed in _network(n) for n in allow)


@settings(max_examples=300, deadline=None)
@given(
    allow=st.lists(networks, max_size=5),
    deny=st.lists(networks, max_size=5),
    address=st.one_of(
        st.ip_addresses().map(str),
        st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
        networks.flatmap(_inside),
    ),
)
def test_permits_agrees_with_ipaddress_membership(
    allow: list[str], deny: list[str], address: str
) -> None:
    assert IpRules.build(allow=allow, deny=deny).permits(address) is _reference(
        allow, deny, address
    )
