"""DNS discovery (meshgate.upstream.dnssource.DnsSource) against a real DNS server.

`FakeDns` is a small authoritative server written with dnslib on 127.0.0.1 (UDP,
a free port), answering from records the tests change (answers, TTLs, failure
modes). The resolver under test is dnspython's asyncio resolver, pointed at it
with ``nameservers``. tests/e2e/test_dns_discovery.py uses the same server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSRecord

from meshgate.config.discovery import DiscoveryConfig, parse_nameserver
from meshgate.config.loader import ConfigError, parse_config
from meshgate.config.models import UpstreamConfig
from meshgate.upstream.cluster import Cluster
from meshgate.upstream.discovery import DiscoveryError, Instances
from meshgate.upstream.dnssource import DnsSource, srv_weights

NAME = "users.svc.test"

# --------------------------------------------------------------------------
# The DNS server
# --------------------------------------------------------------------------

Rdata = str | tuple[int, int, int, str]  # an address, or SRV (priority, weight, port, target)
_RDATA = {"A": A, "AAAA": AAAA, "SRV": lambda v: SRV(*v)}


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class FakeDns(asyncio.DatagramProtocol):
    """An authoritative DNS server for the tests: ``set(name, type, values, ttl)``
    publishes records; ``mode`` makes it fail (``servfail``, ``refused``, or ``drop``:
    never answer); `stop` closes the port (queries are refused by the kernel),
    `start` opens it again on the same port.

    A name without records of any type is NXDOMAIN; a name with records of other
    types only gives an empty NOERROR answer. ``glue`` adds addresses to the
    additional section of SRV answers.
    """

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[list[Rdata], int]] = {}
        self.glue: dict[str, list[tuple[str, str]]] = {}  # SRV name -> [(target, address)]
        self.mode: Literal["answer", "servfail", "refused", "drop"] = "answer"
        self.queries: list[tuple[str, str]] = []
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    def set(self, name: str, rtype: str, values: list[Rdata], ttl: int = 60) -> None:
        if values:
            self.records[(_key(name), rtype)] = (list(values), ttl)
        else:
            self.records.pop((_key(name), rtype), None)

    def clear(self, name: str) -> None:
        for key in [k for k in self.records if k[0] == _key(name)]:
            del self.records[key]

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeDns:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", self.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return
        qname = _key(str(request.q.qname))
        qtype = QTYPE[request.q.qtype]
        self.queries.append((qname, qtype))
        if self.mode == "drop" or self._transport is None:
            return
        reply = request.reply()
        if self.mode != "answer":
            reply.header.rcode = RCODE.SERVFAIL if self.mode == "servfail" else RCODE.REFUSED
        elif not any(k[0] == qname for k in self.records):
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            values, ttl = self.records.get((qname, qtype), ([], 0))
            for v in values:
                reply.add_answer(RR(qname, getattr(QTYPE, qtype), rdata=_RDATA[qtype](v), ttl=ttl))
            if qtype == "SRV":
                for target, address in self.glue.get(qname, []):
                    rtype = "AAAA" if ":" in address else "A"
                    rdata = _RDATA[rtype](address)
                    reply.add_ar(RR(target, getattr(QTYPE, rtype), rdata=rdata, ttl=ttl))
        self._transport.sendto(reply.pack(), addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[FakeDns]:
    server = await FakeDns().start()
    yield server
    server.stop()


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def dns_config(server: FakeDns, **kw: Any) -> DiscoveryConfig:
    cfg: dict[str, Any] = {
        "type": "dns",
        "name": NAME,
        "port": 8080,
        "nameservers": [server.nameserver],
        "timeout_s": 0.5,
    }
    cfg.update(kw)
    return DiscoveryConfig.model_validate({k: v for k, v in cfg.items() if v is not None})


class Recorder:
    """The on_change callback: every list delivered, with its time."""

    def __init__(self) -> None:
        self.lists: list[Instances] = []
        self.times: list[float] = []
        self.changed = asyncio.Event()

    def __call__(self, instances: Instances) -> None:
        self.lists.append(instances)
        self.times.append(time.monotonic())
        self.changed.set()

    async def next(self, wait_s: float = 3.0) -> Instances:
        await asyncio.wait_for(self.changed.wait(), wait_s)
        self.changed.clear()
        return self.lists[-1]


def hosts(instances: Instances) -> list[tuple[str, int, int]]:
    return [(i.host, i.port, i.weight) for i in instances]


async def started(server: FakeDns, **kw: Any) -> tuple[DnsSource, Recorder, Instances]:
    rec = Recorder()
    source = DnsSource(dns_config(server, **kw), rec)
    first = await source.load()
    source.start()
    return source, rec, first


# --------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------


async def test_a_records_give_one_instance_per_address(dns_server: FakeDns) -> None:
    dns_server.set(NAME, "A", ["127.0.0.3", "127.0.0.1", "127.0.0.2"])
    dns_server.set(NAME, "AAAA", ["::1"])
    source = DnsSource(dns_config(dns_server, record="A"), Recorder())
    got = await source.load()
    # sorted by address, the configured port, weight 1
    assert hosts(got) == [("127.0.0.1", 8080, 1), ("127.0.0.2", 8080, 1), ("127.0.0.3", 8080, 1)]
    assert (NAME, "AAAA") not in dns_server.queries


async def test_aaaa_and_both_families(dns_server: FakeDns) -> None:
    dns_server.set(NAME, "A", ["127.0.0.1"])
    dns_server.set(NAME, "AAAA", ["::1", "2001:db8::5"])
    only6 = await DnsSource(dns_config(dns_server, record="AAAA"), Recorder()).load()
    assert hosts(only6) == [("::1", 8080, 1), ("2001:db8::5", 8080, 1)]
    both = await DnsSource(dns_config(dns_server), Recorder()).load()  # default A+AAAA
    assert hosts(both) == [("127.0.0.1", 8080, 1), ("::1", 8080, 1), ("2001:db8::5", 8080, 1)]
    # a name with only A records is fine for A+AAAA (the AAAA answer is just empty)
    dns_server.set(NAME, "AAAA", [])
    v4 = await DnsSource(dns_config(dns_server), Recorder()).load()
    assert hosts(v4) == [("127.0.0.1", 8080, 1)]


async def test_srv_ports_weights_and_lowest_priority(dns_server: FakeDns) -> None:
    dns_server.set(
        NAME,
        "SRV",
        [
            (10, 3, 9001, "a.svc.test"),
            (10, 0, 9002, "b.svc.test"),  # weight 0 counts as 1
            (10, 1, 9003, "gone.svc.test"),  # NXDOMAIN target: left out
            (20, 5, 9009, "backup.svc.test"),  # higher priority value: not used
        ],
    )
    dns_server.set("a.svc.test", "A", ["127.0.0.1", "127.0.0.2"])
    dns_server.set("b.svc.test", "AAAA", ["::1"])
    dns_server.set("backup.svc.test", "A", ["127.0.0.9"])
    source = DnsSource(dns_config(dns_server, record="SRV", port=None), Recorder())
    got = await source.load()
    assert hosts(got) == [("127.0.0.1", 9001, 3), ("127.0.0.2", 9001, 3), ("::1", 9002, 1)]
    assert ("backup.svc.test", "A") not in dns_server.queries


async def test_srv_uses_additional_section_addresses(dns_server: FakeDns) -> None:
    dns_server.set(NAME, "SRV", [(0, 2, 7001, "a.svc.test"), (0, 1, 7002, "b.svc.test")])
    dns_server.glue[NAME] = [("a.svc.test", "127.0.0.4"), ("b.svc.test", "127.0.0.5")]
    source = DnsSource(dns_config(dns_server, record="SRV", port=None), Recorder())
    got = await source.load()
    assert hosts(got) == [("127.0.0.4", 7001, 2), ("127.0.0.5", 7002, 1)]
    assert dns_server.queries == [(NAME, "SRV")]  # no extra address queries


async def test_srv_without_service_is_a_failure(dns_server: FakeDns) -> None:
    dns_server.set(NAME, "SRV", [(0, 0, 0, ".")])  # RFC 2782: service decidedly not available
    source = DnsSource(dns_config(dns_server, record="SRV", port=None), Recorder())
    with pytest.raises(DiscoveryError, match="not available"):
        await source.load()
    # a record with port 0 is skipped too, the others used
    dns_server.set(NAME, "SRV", [(0, 1, 0, "a.svc.test"), (0, 1, 7001, "a.svc.test")])
    dns_server.set("a.svc.test", "A", ["127.0.0.1"])
    assert hosts(await source.load()) == [("127.0.0.1", 7001, 1)]


def test_srv_weights() -> None:
    assert srv_weights([0, 1, 5, 1000]) == [1, 1, 5, 1000]
    # above InstanceConfig's 1000: scaled in proportion, never below 1
    assert srv_weights([65535, 32768, 10, 0]) == [1000, 500, 1, 1]
    assert srv_weights([]) == []


# --------------------------------------------------------------------------
# Re-resolution
# --------------------------------------------------------------------------


async def test_change_picked_up_after_the_ttl(dns_server: FakeDns) -> None:
    dns_server.set(NAME, "A", ["127.0.0.1"], ttl=1)
    source, rec, first = await started(dns_server, record="A", interval_s=30, min_interval_s=0.1)
    try:
        assert hosts(first) == [("127.0.0.1", 8080, 1)]
        assert source.next_delay_s == 1  # the TTL, below interval_s
        t0 = time.monotonic()
        dns_server.set(NAME, "A", ["127.0.0.2", "127.0.0.1"], ttl=1)
        got = await rec.next(wait_s=3)
        assert hosts(got) == [("127.0.0.1", 8080, 1), ("127.0.0.2", 8080, 1)]
        assert 0.8 <= rec.times[-1] - t0 <= 2.0
    finally:
        await source.aclose()


async def test_interval_and_min_interval_bound_the_ttl(dns_server: FakeDns) -> None:
    dns_server.set(NAME, "A", ["127.0.0.1"], ttl=3600)
    source, rec, _ = await started(dns_server, record="A", interval_s=0.2, min_interval_s=0.05)
    try:
        assert source.next_delay_s == 0.2  # interval_s below the TTL
        dns_server.set(NAME, "A", ["127.0.0.2"], ttl=0)
        assert hosts(await rec.next()) == [("127.0.0.2", 8080, 1)]
        assert source.next_delay_s == 0.05  # TTL 0: min_interval_s
        before = len(dns_server.queries)
        await asyncio.sleep(0.3)
        assert 2 <= len(dns_server.queries) - before <= 8  # re-resolved, not in a tight loop
        assert len(rec.lists) == 1  # the same answer again is no change
    finally:
        await source.aclose()


@pytest.mark.parametrize("failure", ["stopped", "drop", "servfail", "refused", "nxdomain", "empty"])
async def test_failures_keep_the_previous_list(
    dns_server: FakeDns, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    dns_server.set(NAME, "A", ["127.0.0.1"], ttl=0)
    dns_server.set(NAME, "TXT", [])
    source, rec, first = await started(
        dns_server, record="A", interval_s=0.4, min_interval_s=0.05, timeout_s=0.2
    )
    try:
        assert hosts(first) == [("127.0.0.1", 8080, 1)]
        caplog.clear()
        with caplog.at_level(logging.WARNING, "meshgate.discovery"):
            if failure == "stopped":
                dns_server.stop()
            elif failure in ("drop", "servfail", "refused"):
                dns_server.mode = failure  # type: ignore[assignment]
            elif failure == "nxdomain":
                dns_server.clear(NAME)
            else:  # the name exists, but without A records
                dns_server.set(NAME, "A", [])
                dns_server.set(NAME, "AAAA", ["::1"])
            await asyncio.sleep(0.6)
        assert rec.lists == []  # nothing delivered: the cluster keeps its list
        assert source.last == first
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings and all("keeping the previous instances" in w for w in warnings)
        expected = {
            "stopped": "timed out",  # a closed UDP port: no answer
            "drop": "timed out",
            "servfail": "SERVFAIL",
            "refused": "REFUSED",
            "nxdomain": "NXDOMAIN",
            "empty": "no records",
        }[failure]
        assert expected in warnings[0], warnings[0]
        assert source.next_delay_s <= 0.4
        # back to normal: the next answer is delivered
        if failure == "stopped":
            await dns_server.start()
        dns_server.mode = "answer"
        dns_server.set(NAME, "A", ["127.0.0.2"], ttl=0)
        assert hosts(await rec.next()) == [("127.0.0.2", 8080, 1)]
    finally:
        await source.aclose()


async def test_failures_back_off_up_to_the_interval(dns_server: FakeDns) -> None:
    dns_server.set(NAME, "A", ["127.0.0.1"], ttl=3600)
    source = DnsSource(dns_config(dns_server, interval_s=0.4, min_interval_s=0.05), Recorder())
    await source.load()
    assert source.next_delay_s == 0.4
    dns_server.mode = "servfail"
    delays = []
    for _ in range(5):
        with pytest.raises(DiscoveryError, match="SERVFAIL"):
            await source.load()
        delays.append(source.next_delay_s)
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.4]
    dns_server.mode = "answer"
    await source.load()
    assert source.next_delay_s == 0.4  # TTL 3600, bounded by interval_s


async def test_resolution_does_not_block_the_event_loop(dns_server: FakeDns) -> None:
    dns_server.mode = "drop"  # every query waits for its timeout
    source = DnsSource(dns_config(dns_server, timeout_s=0.5), Recorder())
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    t0 = time.monotonic()
    with pytest.raises(DiscoveryError, match="timed out"):
        await source.load()
    elapsed = time.monotonic() - t0
    task.cancel()
    assert 0.4 <= elapsed <= 1.6
    assert ticks >= 20  # the loop kept running while both queries waited


def test_runs_on_uvloop() -> None:
    """The gateway's workers run uvloop: the resolver works there too."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> Instances:
        server = await FakeDns().start()
        try:
            server.set(NAME, "A", ["127.0.0.7"])
            return await DnsSource(dns_config(server, record="A"), Recorder()).load()
        finally:
            server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert hosts(runner.run(main())) == [("127.0.0.7", 8080, 1)]


# --------------------------------------------------------------------------
# In a cluster
# --------------------------------------------------------------------------


def upstream(
    discovery: DiscoveryConfig, instances: list[dict[str, Any]] | None = None
) -> UpstreamConfig:
    return UpstreamConfig.model_validate(
        {"name": "users", "instances": instances or [], "discovery": discovery.model_dump()}
    )


async def test_cluster_takes_its_instances_from_dns(dns_server: FakeDns) -> None:
    dns_server.set(NAME, "A", ["127.0.0.1", "127.0.0.2"], ttl=0)
    cfg = dns_config(dns_server, record="A", interval_s=0.1, min_interval_s=0.05)
    cluster = Cluster(upstream(cfg, [{"host": "10.9.9.9", "port": 1}]))
    await cluster.start()
    try:
        assert [h.key for h in cluster.hosts] == ["127.0.0.1:8080", "127.0.0.2:8080"]
        kept = cluster.hosts[1]
        dns_server.set(NAME, "A", ["127.0.0.2", "127.0.0.3"], ttl=0)
        deadline = time.monotonic() + 3
        while [h.key for h in cluster.hosts] != ["127.0.0.2:8080", "127.0.0.3:8080"]:
            assert time.monotonic() < deadline, [h.key for h in cluster.hosts]
            await asyncio.sleep(0.02)
        assert cluster.hosts[0] is kept  # an instance that stays keeps its pool and state
    finally:
        await cluster.aclose()
    assert cluster.source is not None and cluster.source._task is None


async def test_cluster_keeps_static_instances_when_dns_fails_at_start(
    dns_server: FakeDns, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = dns_config(dns_server, record="A", interval_s=0.1, min_interval_s=0.05)
    cluster = Cluster(upstream(cfg, [{"host": "10.9.9.9", "port": 1}]))
    with caplog.at_level(logging.ERROR, "meshgate.cluster"):
        await cluster.start()  # NXDOMAIN: the static list stays
    try:
        assert [h.key for h in cluster.hosts] == ["10.9.9.9:1"]
        assert "using the static instances of users" in caplog.text
        dns_server.set(NAME, "A", ["127.0.0.1"])
        deadline = time.monotonic() + 3
        while [h.key for h in cluster.hosts] != ["127.0.0.1:8080"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await cluster.aclose()


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------


def test_file_discovery_unchanged() -> None:
    cfg = DiscoveryConfig.model_validate({"path": "users.yaml"})
    assert (cfg.type, cfg.path) == ("file", "users.yaml")
    cluster = Cluster(upstream(cfg))
    assert type(cluster.source).__name__ == "FileSource"
    # a dumped config validates again (dns keys at their defaults are no error)
    assert DiscoveryConfig.model_validate(cfg.model_dump()) == cfg


def test_dns_defaults() -> None:
    cfg = DiscoveryConfig.model_validate({"type": "dns", "name": NAME, "port": 80})
    assert (cfg.record, cfg.interval_s, cfg.min_interval_s, cfg.timeout_s) == ("A+AAAA", 30, 1, 2)
    assert cfg.nameserver_addresses() == []  # the system resolver
    srv = DiscoveryConfig.model_validate({"type": "dns", "name": NAME, "record": "srv"})
    assert (srv.record, srv.port) == ("SRV", None)


def test_nameservers() -> None:
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("10.0.0.2") == ("10.0.0.2", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    for bad in ("dns.example:53", "127.0.0.1:0", "[::1", "1.2.3.4:x"):
        with pytest.raises(ValueError, match="nameserver"):
            parse_nameserver(bad)


BASE = "upstreams:\n  - name: a\n    discovery:\n"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(
            "      type: dns\n      name: users.svc\n",
            "gw.yaml:3: upstreams[0].discovery: discovery record A+AAAA needs port "
            "(only SRV records carry ports)",
            id="a-needs-port",
        ),
        pytest.param(
            "      type: dns\n      name: users.svc\n      record: SRV\n      port: 80\n",
            "gw.yaml:7: upstreams[0].discovery.port: SRV records carry each instance's port: "
            "remove port",
            id="srv-with-port",
        ),
        pytest.param(
            "      type: dns\n      port: 80\n",
            "gw.yaml:3: upstreams[0].discovery: discovery type dns needs name",
            id="dns-needs-name",
        ),
        pytest.param(
            "      type: dns\n      name: users..svc\n      port: 80\n",
            "gw.yaml:5: upstreams[0].discovery.name: name 'users..svc' is not a valid DNS name: "
            "A DNS label is empty.",
            id="bad-name",
        ),
        pytest.param(
            "      type: dns\n      name: u.svc\n      port: 80\n      nameservers: [dns.local]\n",
            "gw.yaml:7: upstreams[0].discovery.nameservers: nameserver 'dns.local': expected an "
            "IP address with an optional port (127.0.0.1:5353, [::1]:5353)",
            id="nameserver-not-ip",
        ),
        pytest.param(
            "      type: dns\n      name: u.svc\n      port: 80\n      record: MX\n",
            "gw.yaml:7: upstreams[0].discovery.record: Input should be 'A', 'AAAA', 'A+AAAA' "
            "or 'SRV'",
            id="bad-record",
        ),
        pytest.param(
            "      type: dns\n      name: u.svc\n      port: 80\n      min_interval_s: 60\n",
            "gw.yaml:3: upstreams[0].discovery: min_interval_s (60.0) is above interval_s (30.0)",
            id="min-above-interval",
        ),
        pytest.param(
            "      type: dns\n      name: u.svc\n      port: 80\n      timeout_s: .inf\n",
            "gw.yaml:7: upstreams[0].discovery.timeout_s: Input should be a finite number",
            id="infinite-timeout",
        ),
        pytest.param(
            "      type: dns\n      name: u.svc\n      port: 80\n      path: x.yaml\n",
            "gw.yaml:7: upstreams[0].discovery.path: path is for type: file; type: dns "
            "resolves name",
            id="dns-with-path",
        ),
        pytest.param(
            "      path: x.yaml\n      port: 80\n",
            "gw.yaml:5: upstreams[0].discovery.port: port is for type: dns "
            "(this discovery is type: file)",
            id="file-with-dns-key",
        ),
        pytest.param(
            "      type: file\n",
            "gw.yaml:3: upstreams[0].discovery: discovery type file needs path",
            id="file-needs-path",
        ),
    ],
)
def test_config_errors(body: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + body, "gw.yaml")
    assert str(info.value) == error
