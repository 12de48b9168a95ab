"""Tests of the client address behind trusted proxies (meshgate.core.clientip)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.clientip import client_ip, parse_networks

TRUSTED = parse_networks(["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"])


# --------------------------------------------------------------------------- parse_networks


def test_parse_networks() -> None:
    assert parse_networks([]) == ()
    assert parse_networks(["10.0.0.0/8", " 192.0.2.7 ", "2001:db8::/32", "::1"]) == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("192.0.2.7/32"),
        IPv6Network("2001:db8::/32"),
        IPv6Network("::1/128"),
    )


def test_parse_networks_turns_mapped_networks_into_ipv4() -> None:
    assert parse_networks(["::ffff:10.0.0.0/104", "::ffff:192.0.2.7"]) == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("192.0.2.7/32"),
    )
    # ::/0 contains the mapped range but is not inside it: stays IPv6
    assert parse_networks(["::/0"]) == (IPv6Network("::/0"),)


@pytest.mark.parametrize(
    ("cidrs", "message"),
    [
        (
            ["10.0.0.1/8"],
            r"trusted network 0 \('10\.0\.0\.1/8'\) has host bits set: did you mean "
            r"'10\.0\.0\.0/8'\?",
        ),
        (["10.0.0.0/8", "2001:db8::1/32"], r"trusted network 1 .* did you mean '2001:db8::/32'"),
        (
            ["10.0.0.0/8", "proxy.internal"],
            r"trusted network 1 \('proxy\.internal'\) is not an IP address or CIDR network",
        ),
        ([""], r"trusted network 0 \(''\) is not"),
        (["10.0.0.0/33"], r"'10\.0\.0\.0/33'\) is not"),
        (["10.0.0.0/8, 192.168.0.0/16"], r"is not an IP address"),
    ],
)
def test_parse_networks_names_the_bad_entry(cidrs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_networks(cidrs)


# --------------------------------------------------------------------------- client_ip


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        # an untrusted peer is the client, whatever it claims
        ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),
        ("203.0.113.7", [], "203.0.113.7"),
        # a trusted proxy: the rightmost untrusted address
        ("10.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("10.0.0.1", ["203.0.113.7, 10.0.0.2"], "203.0.113.7"),
        ("10.0.0.1", ["198.51.100.1, 203.0.113.7, 10.0.0.2"], "203.0.113.7"),  # spoofed left
        ("10.0.0.1", ["198.51.100.1,203.0.113.7 ,  192.168.1.1"], "203.0.113.7"),
        # all trusted: the leftmost
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", [""], "10.0.0.1"),
        # several header lines form one list, in order
        ("10.0.0.1", ["203.0.113.7", "10.0.0.2"], "203.0.113.7"),
        ("10.0.0.1", ["198.51.100.9, 10.0.0.5", "10.0.0.2"], "198.51.100.9"),
        ("10.0.0.1", ["198.51.100.9", "203.0.113.7, 10.0.0.2"], "203.0.113.7"),
        # empty list elements are skipped
        ("10.0.0.1", ["203.0.113.7,, 10.0.0.2,"], "203.0.113.7"),
        ("10.0.0.1", [",", "203.0.113.7"], "203.0.113.7"),
        # garbage stops the walk: the trusted address read just before it
        ("10.0.0.1", ["203.0.113.7, garbage, 10.0.0.2"], "10.0.0.2"),
        ("10.0.0.1", ["203.0.113.7, garbage"], "10.0.0.1"),
        ("10.0.0.1", ["unknown"], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.7:4711, 10.0.0.2"], "10.0.0.2"),  # a port is not an address
        ("10.0.0.1", ["[2001:db8::9]"], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.7", "garbage", "10.0.0.2"], "10.0.0.2"),
        # garbage left of the client does not matter
        ("10.0.0.1", ["garbage, 203.0.113.7, 10.0.0.2"], "203.0.113.7"),
        # IPv6, returned in canonical form
        ("2001:db8::1", ["2606:4700:0:0::AB"], "2606:4700::ab"),
        ("2001:db8::1", ["2606:4700::ab, 2001:db8::2, 10.0.0.5"], "2606:4700::ab"),
        ("10.0.0.1", ["2001:db8::5, 2001:DB8::6"], "2001:db8::5"),
        ("2001:db8::1", ["fe80::1%eth0"], "fe80::1%eth0"),
        # IPv4-mapped IPv6 is IPv4
        ("::ffff:10.0.0.1", ["::ffff:203.0.113.7"], "203.0.113.7"),
        ("::ffff:10.0.0.1", ["::ffff:10.0.0.9"], "10.0.0.9"),
        ("10.0.0.1", ["203.0.113.7, ::ffff:10.0.0.2"], "203.0.113.7"),
        ("::ffff:203.0.113.7", ["198.51.100.1"], "::ffff:203.0.113.7"),  # the peer as given
        # a peer that is not an IP address (e.g. a Unix socket) is the client
        ("", ["203.0.113.7"], ""),
        ("unix:/run/meshgate.sock", ["203.0.113.7"], "unix:/run/meshgate.sock"),
    ],
)
def test_client_ip(peer: str, forwarded_for: list[str], expected: str) -> None:
    assert client_ip(peer, forwarded_for, TRUSTED) == expected


def test_without_trusted_networks_the_header_is_ignored() -> None:
    assert client_ip("10.0.0.1", ["203.0.113.7"], ()) == "10.0.0.1"
    assert client_ip("not even an address", ["203.0.113.7"], []) == "not even an address"


def test_mapped_trusted_network_matches_ipv4_and_mapped_peers() -> None:
    trusted = parse_networks(["::ffff:10.0.0.0/104"])
    assert client_ip("10.1.2.3", ["203.0.113.7"], trusted) == "203.0.113.7"
    assert client_ip("::ffff:10.1.2.3", ["203.0.113.7"], trusted) == "203.0.113.7"


def test_ipv4_and_ipv6_networks_never_match_the_other_family() -> None:
    assert client_ip("10.0.0.1", ["203.0.113.7"], parse_networks(["::/0"])) == "10.0.0.1"
    assert client_ip("2001:db8::1", ["203.0.113.7"], parse_networks(["0.0.0.0/0"])) == (
        "2001:db8::1"
    )


# --------------------------------------------------------------------------- properties


def _trusted(text: str) -> bool:
    address = ip_address(text)
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in TRUSTED)


def _canonical(text: str) -> str:
    address = ip_address(text)
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _inside(network: str) -> st.SearchStrategy[str]:
    net = IPv4Network(network) if "." in network else IPv6Network(network)
    first, size = int(net.network_address), net.num_addresses
    return st.integers(0, size - 1).map(lambda i: str(ip_address(first + i)))


# about half of the addresses fall in a trusted network; some are IPv4-mapped
addresses = st.one_of(
    _inside("10.0.0.0/8"),
    _inside("2001:db8::/32"),
    _inside("10.0.0.0/8").map(lambda a: f"::ffff:{a}"),
    st.ip_addresses().map(str),
    _inside("203.0.113.0/24").map(lambda a: f"::ffff:{a}"),
)


def _headers(entries: list[str], cuts: list[int]) -> list[str]:
    """`entries` written as several header values, split before the positions in `cuts`."""
    bounds = sorted({0, len(entries), *(c % (len(entries) + 1) for c in cuts)})
    return [", ".join(entries[a:b]) for a, b in pairwise(bounds)]


@settings(max_examples=200, deadline=None)
@given(
    peer=st.one_of(addresses, st.text(max_size=20)),
    forwarded_for=st.lists(st.text(max_size=30), max_size=4),
)
def test_no_trusted_networks_means_the_peer(peer: str, forwarded_for: list[str]) -> None:
    assert client_ip(peer, forwarded_for, ()) == peer


@settings(max_examples=200, deadline=None)
@given(
    peer=addresses,
    entries=st.lists(addresses, max_size=8),
    cuts=st.lists(st.integers(0, 8), max_size=3),
)
def test_result_is_trusted_only_when_everything_is(
    peer: str, entries: list[str], cuts: list[int]
) -> None:
    result = client_ip(peer, _headers(entries, cuts), TRUSTED)
    assert result == peer or result in {_canonical(e) for e in entries}
    if _trusted(result):
        assert _trusted(peer)
        assert all(_trusted(e) for e in entries)
        assert result == (_canonical(entries[0]) if entries else peer)
    elif _trusted(peer):
        # the rightmost untrusted entry, everything right of it trusted
        i = max(i for i, e in enumerate(entries) if not _trusted(e))
        assert result == _canonical(entries[i])
    else:
        assert result == peer


@settings(max_examples=200, deadline=None)
@given(
    peer=addresses,
    entries=st.lists(addresses, max_size=6),
    proxies=st.lists(_inside("10.0.0.0/8"), min_size=1, max_size=3),
)
def test_more_trusted_hops_do_not_change_the_client(
    peer: str, entries: list[str], proxies: list[str]
) -> None:
    # the request passes through more trusted proxies: each appends the address it
    # received the request from, and the last one is the new peer
    direct = client_ip(peer, [", ".join(entries)], TRUSTED)
    hops = [*entries, peer, *proxies[:-1]]
    assert _canonical(client_ip(proxies[-1], [", ".join(hops)], TRUSTED)) == _canonical(direct)


@settings(max_examples=200, deadline=None)
@given(
    spoofed=st.lists(_inside("198.51.100.0/24"), max_size=3),
    garbage=st.sampled_from(["garbage", "1.2.3.4:80", "[::1]", "999.1.1.1", "_", "1.2.3"]),
    right=st.lists(addresses, max_size=5),
)
def test_nothing_left_of_garbage_is_believed(
    spoofed: list[str], garbage: str, right: list[str]
) -> None:
    result = client_ip("10.0.0.1", [", ".join([*spoofed, garbage, *right])], TRUSTED)
    # (unless the same address also comes right of the garbage)
    assert result not in set(spoofed) - {_canonical(e) for e in right}
    assert result == "10.0.0.1" or result in {_canonical(e) for e in right}
