"""TLS on the public listener (SPEC section 14): one `ssl.SSLContext` per certificate,
an SNI callback that picks one by the names in each, and their reload.

    certificates = Certificates(config.tls)   # reads every pair (each worker its own)
    server = await loop.create_server(..., ssl=certificates.default)
    reloader = Periodic("tls reload", config.tls.reload_interval, certificates.reload)

The listener's context is the first certificate's; `sni_callback` swaps in the
context whose names match the client's server name for that handshake. A reload
builds a new set and replaces `self._current` in one assignment: new handshakes read
the new set, open connections keep the context they shook hands with. A renewal that
fails to load keeps the old set and logs why (the files are tried again at the next
change).
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

from .config import TLSConfig
from .config.read import CertificateFacts, certificate_facts, certificate_problem
from .metrics import Metrics

log = logging.getLogger("keyfront")

# Mozilla's "intermediate" profile (TLS 1.2 ciphers; TLS 1.3's are OpenSSL's defaults).
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
MAX_SERVER_NAME = 253  # a DNS name's longest written form (RFC 1035)


@dataclass(frozen=True, slots=True)
class Loaded:
    """One certificate, ready: its context and what SNI and the metric read."""

    context: ssl.SSLContext
    facts: CertificateFacts


@dataclass(frozen=True, slots=True)
class CertificateSet:
    """The certificates of one load: exact names and `*.` wildcards (one label deep)
    to the context that serves them; the first certificate's names win a clash."""

    loaded: tuple[Loaded, ...]
    exact: dict[str, ssl.SSLContext]
    wildcard: dict[str, ssl.SSLContext]  # "example.com" for "*.example.com"

    def pick(self, server_name: str) -> ssl.SSLContext | None:
        name = server_name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is None:
            _, dot, parent = name.partition(".")
            found = self.wildcard.get(parent) if dot else None
        return found


class Certificates:
    """The listener's certificates: the default context (the first pair's, whose
    `sni_callback` picks per handshake) and the current set, reloaded on change."""

    def __init__(self, config: TLSConfig) -> None:
        self.config = config
        self._stamps = self._file_stamps()
        self._current = self._build()
        # The listener's: the first pair as loaded at start, for a handshake whose SNI
        # callback did not run; the callback sets the current set's context.
        self.default = self._context()
        first = config.certificates[0]
        self.default.load_cert_chain(first.cert, first.key)
        self.failures = 0  # reloads that failed to load, over the process's life

    @property
    def current(self) -> CertificateSet:
        return self._current

    def expiry(self) -> dict[str, float]:
        """The first DNS name of each certificate -> its notAfter (Unix time)."""
        out: dict[str, float] = {}
        for loaded in self._current.loaded:
            if loaded.facts.names:
                out.setdefault(loaded.facts.names[0], loaded.facts.not_after)
        return out

    def count_into(self, metrics: Metrics) -> None:
        """The expiry of each certificate (a Metrics source): a host gauge, the same in
        every worker, so never summed."""
        metrics.labelled_host_gauges["tls_certificate_expiry_timestamp_seconds"] = (
            "name",
            self.expiry(),
        )

    def reload(self) -> None:
        """A Periodic tick: rebuild when any file's mtime or size changed."""
        stamps = self._file_stamps()
        if stamps == self._stamps:
            return
        self._stamps = stamps
        try:
            for i, pair in enumerate(self.config.certificates):
                problem = certificate_problem(pair.cert, pair.key)
                if problem is not None:
                    raise ValueError(f"tls.certificates[{i}].{problem[0]}: {problem[1]}")
            fresh = self._build()
        except (ValueError, OSError, ssl.SSLError) as exc:
            self.failures += 1
            log.error("TLS reload failed, the certificates loaded before stay: %s", exc)
            return
        self._current = fresh  # one assignment: the next handshake sees the new set
        log.info("TLS certificates reloaded: %s", ", ".join(self.expiry()))

    def _file_stamps(self) -> tuple[tuple[int, int], ...]:
        stamps: list[tuple[int, int]] = []
        for pair in self.config.certificates:
            for path in (pair.cert, pair.key):
                try:
                    status = os.stat(path)
                    stamps.append((status.st_mtime_ns, status.st_size))
                except OSError:
                    stamps.append((-1, -1))  # gone: a change, tried when it is back
        return tuple(stamps)

    def _build(self) -> CertificateSet:
        loaded: list[Loaded] = []
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for pair in self.config.certificates:
            context = self._context()
            context.load_cert_chain(pair.cert, pair.key)
            facts = certificate_facts(pair.cert)
            loaded.append(Loaded(context, facts))
            for name in facts.names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], context)
                else:
                    exact.setdefault(name, context)
        return CertificateSet(tuple(loaded), exact, wildcard)

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _VERSIONS[self.config.min_version]
        context.set_ciphers(INTERMEDIATE_CIPHERS)
        context.set_alpn_protocols(["http/1.1"])
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        context.sni_callback = self._pick
        return context

    def _pick(self, sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        """The SNI callback: the matching certificate's context, else the first's
        (a client without SNI, or a name keyfront has no certificate for)."""
        current = self._current
        chosen = None
        if server_name and len(server_name) <= MAX_SERVER_NAME:
            chosen = current.pick(server_name)
        sock.context = chosen or current.loaded[0].context
