"""TLS contexts: the listener's (certificates chosen by SNI, reloaded when their
files change) and the upstreams' (verification, SNI, client certificates).

The listener hands one *front* context to the server; its ``sni_callback``
switches each handshake to the context of the certificate the client's SNI
names (exact name, then a wildcard one label deep, else the first certificate).
A reload builds a new set of contexts aside (in a thread: file reads and key
parsing stay off the event loop) and swaps the lookup tables in one
assignment, so new handshakes get the new certificate while open connections
keep the session they have.

ALPN: a listener serving HTTP/2 offers ``h2`` then ``http/1.1`` (`ALPN_H2`), and
the server picks the protocol of each connection from ``TlsInfo.alpn``; upstream
connections offer the one protocol their upstream speaks: ``http/1.1`` (`ALPN`), or
``h2`` (`ALPN_H2_ONLY`) for ``protocol: h2``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from meshgate.config.loader import ConfigError, ConfigProblem, LocatedDocument, key_path
from meshgate.config.tls import ListenerTlsConfig, UpstreamTlsConfig, check_ca, check_pair
from meshgate.http.tls import ClientCertificate, TlsInfo

log = logging.getLogger("meshgate.tls")

ALPN = ("http/1.1",)
ALPN_H2 = ("h2", "http/1.1")
ALPN_H2_ONLY = ("h2",)
VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class _Contexts:
    default: ssl.SSLContext
    exact: dict[str, ssl.SSLContext]
    wildcard: dict[str, ssl.SSLContext]  # "example.com" for "*.example.com"


class ServerTls:
    """The listener's TLS: the front context for the server, and its reload."""

    def __init__(
        self,
        config: ListenerTlsConfig,
        doc: LocatedDocument | None = None,
        *,
        alpn: tuple[str, ...] = ALPN,
    ) -> None:
        """Load every certificate now; raise `ConfigError` (located in ``doc``, the
        config file) when one does not. ``alpn``: the protocols offered, preferred
        first (`ALPN_H2` when the listener serves HTTP/2)."""
        self.config = config
        self.alpn = alpn
        self._doc = doc
        self._stamps = file_stamps(config.files())
        self._contexts = self._build()
        self.context = self._new_context()  # the front: options shared by every handshake
        default = config.certificates[0]
        self.context.load_cert_chain(default.cert_file, default.key_file)
        self.context.sni_callback = self._select
        self._watcher: asyncio.Task[None] | None = None

    def _new_context(self) -> ssl.SSLContext:
        cfg = self.config
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = VERSIONS[cfg.min_version]
        ctx.set_ciphers(cfg.ciphers)
        ctx.set_alpn_protocols(list(self.alpn))
        if cfg.client_ca_file is not None:
            ctx.load_verify_locations(cafile=cfg.client_ca_file)
            ctx.verify_mode = (
                ssl.CERT_REQUIRED if cfg.client_auth == "require" else ssl.CERT_OPTIONAL
            )
        return ctx

    def _build(self) -> _Contexts:
        """A context per certificate plus the SNI lookup tables (blocking file reads)."""
        problems: list[ConfigProblem] = []
        loc: tuple[str | int, ...] = ("listener", "tls")
        built: list[tuple[tuple[str, ...], ssl.SSLContext]] = []
        if self.config.client_ca_file is not None:
            problem = check_ca(self.config.client_ca_file)
            if problem is not None:
                problems.append(self._locate((*loc, "client_ca_file"), problem))
        for i, pair in enumerate(self.config.certificates):
            result = check_pair(pair.cert_file, pair.key_file)
            if isinstance(result, list):
                problems += [
                    self._locate((*loc, "certificates", i, field), msg) for field, msg in result
                ]
                continue
            if problems:
                continue
            try:
                ctx = self._new_context()
                ctx.load_cert_chain(pair.cert_file, pair.key_file)
            except (OSError, ssl.SSLError) as exc:  # changed between the check and the load
                problems.append(self._locate((*loc, "certificates", i), str(exc)))
                continue
            built.append((result.names, ctx))
        if problems:
            raise ConfigError(problems)
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for names, ctx in built:  # earlier certificates win a name both have
            for name in names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], ctx)
                else:
                    exact.setdefault(name, ctx)
        return _Contexts(built[0][1], exact, wildcard)

    def _locate(self, loc: tuple[str | int, ...], message: str) -> ConfigProblem:
        if self._doc is not None:
            return self._doc.problem(loc, message)
        return ConfigProblem("<config>", 0, key_path(loc), message)

    def _select(
        self,
        sslobj: ssl.SSLObject | ssl.SSLSocket,
        server_name: str | None,
        _initial: ssl.SSLContext,
    ) -> None:
        """sni_callback: switch the handshake to the certificate for ``server_name``."""
        contexts = self._contexts
        ctx = contexts.default
        if server_name:
            name = server_name.lower().rstrip(".")
            found = contexts.exact.get(name)
            if found is None:
                _, dot, parent = name.partition(".")
                found = contexts.wildcard.get(parent) if dot else None
            if found is not None:
                ctx = found
        sslobj.context = ctx

    # --- reload --------------------------------------------------------------
    def start(self) -> None:
        """Watch the files (``reload_check_s``) until `aclose`."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_check_s)
            try:
                await self.check_reload()
            except Exception:  # never let the watcher die: the old certificates serve on
                log.exception("TLS certificate reload check failed")

    async def check_reload(self) -> bool:
        """Reload when a file changed since the last load; True when new ones serve."""
        stamps = await asyncio.to_thread(file_stamps, self.config.files())
        if stamps == self._stamps:
            return False
        try:
            contexts = await asyncio.to_thread(self._build)
        except ConfigError as exc:
            self._stamps = stamps  # one report per change, not one per check
            for problem in exc.problems:
                log.error("TLS reload refused: %s; the previous certificates keep serving", problem)
            return False
        self._stamps = stamps
        self._contexts = contexts
        log.info("TLS certificates reloaded (%d)", len(self.config.certificates))
        return True

    async def aclose(self) -> None:
        task, self._watcher = self._watcher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def file_stamps(paths: list[str]) -> tuple[tuple[int, int, int], ...]:
    """(mtime ns, size, inode) of each file; zeros for a missing one."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((0, 0, 0))
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def tls_info(sslobj: ssl.SSLObject | ssl.SSLSocket) -> TlsInfo:
    """What a finished server-side handshake negotiated, with the client's certificate."""
    cipher = sslobj.cipher()
    peer = sslobj.getpeercert()
    certificate = None
    if peer:
        der = sslobj.getpeercert(binary_form=True) or b""
        certificate = ClientCertificate.from_peercert(dict(peer), der)
    return TlsInfo(
        version=sslobj.version() or "",
        cipher=cipher[0] if cipher else "",
        alpn=sslobj.selected_alpn_protocol(),
        client_certificate=certificate,
    )


def client_context(config: UpstreamTlsConfig, alpn: tuple[str, ...] = ALPN) -> ssl.SSLContext:
    """The context of an upstream's TLS connections (system CAs unless ``ca_file``),
    offering ``alpn``.
    With ``spiffe_id`` the chain is verified but the name checked is that URI SAN
    (`ClientTls.peer_problem`), not a DNS name."""
    ctx = ssl.create_default_context(cafile=config.ca_file)
    ctx.minimum_version = VERSIONS[config.min_version]
    if not config.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif config.spiffe_id is not None:
        ctx.check_hostname = False
    if config.cert_file is not None and config.key_file is not None:
        ctx.load_cert_chain(config.cert_file, config.key_file)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


class ClientTls:
    """An upstream's TLS: its context, rebuilt when its files change (looked at, at
    most every ``reload_check_s``, when a connection is opened: a rotated client
    certificate or CA bundle serves the next connections), its SNI, and the SPIFFE
    ID the upstream must prove."""

    def __init__(
        self,
        config: UpstreamTlsConfig,
        clock: Callable[[], float] = time.monotonic,
        alpn: tuple[str, ...] = ALPN,
    ) -> None:
        self.config = config
        self.alpn = alpn
        self.server_name = config.server_name
        self.spiffe_id = config.spiffe_id
        self._clock = clock
        self._files = config.files()
        self._stamps = file_stamps(self._files)
        self._context = client_context(config, alpn)
        self._checked_at = clock()

    def context(self) -> ssl.SSLContext:
        """The current context (rebuilt first when a file changed)."""
        now = self._clock()
        if self._files and now - self._checked_at >= self.config.reload_check_s:
            self._checked_at = now
            stamps = file_stamps(self._files)
            if stamps != self._stamps:
                self._stamps = stamps
                try:
                    self._context = client_context(self.config, self.alpn)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    log.error(
                        "upstream TLS files %s changed but do not load (%s); the previous "
                        "ones keep serving",
                        ", ".join(self._files),
                        exc,
                    )
                else:
                    log.info("upstream TLS files reloaded: %s", ", ".join(self._files))
        return self._context

    def peer_problem(self, sslobj: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
        """Why the verified peer is not the upstream wanted (its SPIFFE ID), or None."""
        if self.spiffe_id is None:
            return None
        cert = sslobj.getpeercert() if sslobj is not None else None
        sans = cast("tuple[tuple[str, str], ...]", (cert or {}).get("subjectAltName", ()))
        uris = [v for k, v in sans if k == "URI"]
        if self.spiffe_id in uris:
            return None
        has = ", ".join(map(str, uris)) or "no SPIFFE ID"
        return f"certificate is for {has}, not {self.spiffe_id}"
