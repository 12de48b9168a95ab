"""DNS discovery: instances from A/AAAA or SRV records.

`DnsSource` resolves them with dnspython's asyncio resolver and re-resolves them
on their TTL (within ``[min_interval_s, interval_s]``). A DNS failure (timeout,
SERVFAIL, NXDOMAIN, no records) keeps the last good list. Imported only by
upstreams with ``discovery: {type: dns}`` (dnspython costs about 2 MB of RSS).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from meshgate.config.discovery import DiscoveryConfig
from meshgate.config.models import InstanceConfig
from meshgate.upstream.discovery import DiscoveryError, Instances, Source

log = logging.getLogger("meshgate.discovery")


MAX_WEIGHT = 1000  # InstanceConfig's bound; SRV weights (0-65535) are scaled into it


class _Negative(Exception):
    """A definitive "no such records" (NXDOMAIN or an empty answer)."""


def _sorted(instances: Iterable[InstanceConfig]) -> Instances:
    """One instance per host:port (the highest weight given), in a stable order (so
    an answer that only reorders its records is no change)."""
    seen: dict[tuple[str, int], InstanceConfig] = {}
    for inst in instances:
        old = seen.get((inst.host, inst.port))
        if old is None or inst.weight > old.weight:
            seen[(inst.host, inst.port)] = inst

    def order(key: tuple[str, int]) -> tuple[int, int, int]:
        ip = ipaddress.ip_address(key[0])
        return ip.version, int(ip), key[1]

    return [seen[k] for k in sorted(seen, key=order)]


def srv_weights(weights: list[int]) -> list[int]:
    """SRV weights as instance weights: 0 counts as 1 (RFC 2782 gives weight-0
    records a small chance, never none); above 1000 all are scaled down in proportion."""
    top = max(weights, default=0)
    if top <= MAX_WEIGHT:
        return [max(w, 1) for w in weights]
    return [max(1, round(w * MAX_WEIGHT / top)) for w in weights]


class DnsSource(Source):
    """Instances from DNS records, re-resolved when their TTL runs out.

    ``A``/``AAAA``/``A+AAAA``: one instance per address, on the configured port.
    ``SRV``: the records of the lowest priority only; each target's addresses on
    the record's port with the record's weight (targets resolved from the
    answer's additional section when present, else with A and AAAA queries).

    Resolution never blocks the event loop (dnspython's asyncio resolver). A
    failed resolution -- timeout, SERVFAIL, refused, NXDOMAIN, or an answer with
    no usable records -- is logged as a warning and the last good list kept; it
    is retried sooner (from ``min_interval_s``, doubling up to ``interval_s``).
    """

    def __init__(self, config: DiscoveryConfig, on_change: Callable[[Instances], None]) -> None:
        super().__init__(on_change)
        assert config.type == "dns" and config.name is not None
        self.config = config
        self.name = dns.name.from_text(config.name)
        self.last: Instances | None = None  # the last good list
        self.next_delay_s = config.min_interval_s  # until the next resolution
        self._failures = 0
        self._resolver: dns.asyncresolver.Resolver | None = None

    def __repr__(self) -> str:
        return f"DnsSource({self.config.name} {self.config.record})"

    def resolver(self) -> dns.asyncresolver.Resolver:
        """The configured nameservers, or the system's (read from /etc/resolv.conf once)."""
        if self._resolver is None:
            addresses = self.config.nameserver_addresses()
            try:
                resolver = dns.asyncresolver.Resolver(configure=not addresses)
            except dns.exception.DNSException as exc:
                raise DiscoveryError(f"dns {self.config.name}: no system resolver: {exc}") from None
            if addresses:
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(ip, port) for ip, port in addresses
                ]
            resolver.timeout = self.config.timeout_s  # per attempt
            resolver.lifetime = self.config.timeout_s  # the whole query, retries included
            resolver.cache = None
            self._resolver = resolver
        return self._resolver

    async def _query(self, name: dns.name.Name, rdtype: str) -> dns.resolver.Answer:
        """One query; `_Negative` for NXDOMAIN or no records, DiscoveryError for the rest."""
        try:
            return await self.resolver().resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            raise _Negative(f"{rdtype} {name}: {_describe(exc)}") from None
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"dns {rdtype} {name}: {_describe(exc)}") from None

    async def _addresses(
        self, name: dns.name.Name, rdtypes: tuple[str, ...]
    ) -> tuple[list[str], float]:
        """The addresses of ``name`` (queries run concurrently) and their lowest TTL.
        A type without records is fine while another has some; `_Negative` when none has."""
        results = await asyncio.gather(
            *(self._query(name, t) for t in rdtypes), return_exceptions=True
        )
        addresses: list[str] = []
        ttl = float("inf")
        negatives: list[str] = []
        for result in results:
            if isinstance(result, _Negative):
                negatives.append(str(result))
            elif isinstance(result, BaseException):
                raise result  # a failure (timeout, SERVFAIL): the whole answer is unknown
            else:
                ttl = min(ttl, result.chaining_result.minimum_ttl)
                addresses.extend(rd.address for rd in result)
        if not addresses:
            raise _Negative("; ".join(negatives) or f"{name}: no addresses")
        return addresses, ttl

    async def _resolve(self) -> tuple[Instances, float]:
        record = self.config.record
        if record != "SRV":
            rdtypes = ("A", "AAAA") if record == "A+AAAA" else (record,)
            port = self.config.port
            assert port is not None
            addresses, ttl = await self._addresses(self.name, rdtypes)
            return _sorted(InstanceConfig(host=a, port=port) for a in addresses), ttl
        answer = await self._query(self.name, "SRV")
        ttl = float(answer.chaining_result.minimum_ttl)
        # target "." means "no service here" (RFC 2782); port 0 cannot be connected to
        records = [rd for rd in answer if rd.target != dns.name.root and rd.port]
        if not records:
            raise _Negative(f"SRV {self.name}: no usable record (service not available)")
        lowest = min(rd.priority for rd in records)
        records = [rd for rd in records if rd.priority == lowest]
        weights = srv_weights([rd.weight for rd in records])
        glue = _glue(answer.response)
        targets = {rd.target for rd in records if rd.target not in glue}
        looked_up = await asyncio.gather(
            *(self._addresses(t, ("A", "AAAA")) for t in targets), return_exceptions=True
        )
        by_target: dict[dns.name.Name, list[str]] = {}
        for target, result in zip(targets, looked_up, strict=True):
            if isinstance(result, _Negative):
                log.warning("dns SRV %s: target %s has no addresses: %s", self.name, target, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                by_target[target], target_ttl = result
                ttl = min(ttl, target_ttl)
        for target, (target_addresses, target_ttl) in glue.items():
            by_target[target] = target_addresses
            ttl = min(ttl, target_ttl)
        instances = [
            InstanceConfig(host=a, port=rd.port, weight=w)
            for rd, w in zip(records, weights, strict=True)
            for a in by_target.get(rd.target, ())
        ]
        if not instances:
            raise _Negative(f"SRV {self.name}: no target has an address")
        return _sorted(instances), ttl

    async def load(self) -> Instances:
        """Resolve now: the instance list (also kept as `last`), or DiscoveryError (the
        caller keeps what it has). Sets `next_delay_s` either way."""
        cfg = self.config
        try:
            try:
                async with asyncio.timeout(cfg.timeout_s * 3):  # SRV: SRV, then the targets
                    instances, ttl = await self._resolve()
            except TimeoutError:
                raise DiscoveryError(f"dns {cfg.record} {cfg.name}: timed out") from None
            except _Negative as exc:
                raise DiscoveryError(f"dns {exc}") from None
            except DiscoveryError:
                raise
            except Exception as exc:  # not expected from dnspython; never end the loop
                raise DiscoveryError(f"dns {cfg.record} {cfg.name}: {exc!r}") from exc
        except DiscoveryError:
            self._failures += 1
            self.next_delay_s = min(
                cfg.interval_s, cfg.min_interval_s * 2 ** min(self._failures - 1, 16)
            )
            raise
        if self._failures:
            log.info("dns %s %s resolves again", cfg.record, cfg.name)
        self._failures = 0
        self.next_delay_s = max(cfg.min_interval_s, min(ttl, cfg.interval_s))
        self.last = instances
        return instances

    def start(self) -> None:
        """Re-resolve in the background (the first time after `next_delay_s`)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=repr(self))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.next_delay_s)
            previous = self.last
            try:
                instances = await self.load()
            except DiscoveryError as exc:
                log.warning("%s; keeping the previous instances", exc)
                continue
            if instances == previous:
                continue
            self._apply(instances)

    async def aclose(self) -> None:
        await self._stop_task()


def _glue(response: dns.message.Message) -> dict[dns.name.Name, tuple[list[str], float]]:
    """Addresses (and their lowest TTL) from an answer's additional section."""
    out: dict[dns.name.Name, tuple[list[str], float]] = {}
    for rrset in response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            addresses, ttl = out.get(rrset.name, ([], float("inf")))
            out[rrset.name] = ([*addresses, *(rd.address for rd in rrset)], min(ttl, rrset.ttl))
    return out


def _describe(exc: dns.exception.DNSException) -> str:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "NXDOMAIN (no such name)"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "no records of that type"
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    return str(exc) or type(exc).__name__
