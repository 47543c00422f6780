"""The printed report: the machine, the tables, SPEC section 12's targets against what
was measured. Markdown throughout, so that docs/performance.md can quote it as is."""

from __future__ import annotations

import datetime
import statistics
from dataclasses import dataclass, field

from . import scenarios
from .matrix import DISTURBED, NGINX, Cell, Results, cpu, main_table, ratio_table, rps
from .servers import Target
from .setup import (
    ANALYTICS_OFF,
    ASYNCIO_LOOP,
    AUTH_OFF,
    BASELINE,
    CELLS,
    EXTERNAL,
    FAST_PATH_OFF,
    FLOOR_PREFIX,
    KEYFRONT,
    METERING_OFF,
    READ_SIZE_PREFIX,
    SQLITE,
    TLS_CELLS,
    Bench,
)
from .system import loadavg, machine, rss_bytes

TEN_KB_C64, TEN_KB_C8, ONE_MB_C64, ONE_MB_C8 = CELLS
TLS_10K_C64, TLS_10K_C8, TLS_1M_C64, TLS_1M_C8, HANDSHAKES = TLS_CELLS
FLOOR_ASYNCIO, FLOOR_UVLOOP = f"{FLOOR_PREFIX} (asyncio)", f"{FLOOR_PREFIX} (uvloop)"
COMPARISONS = (
    ("every check on / auth off", KEYFRONT, AUTH_OFF),
    ("Redis bucket / SQLite store (in-process bucket)", KEYFRONT, SQLITE),
    ("metering on / off", KEYFRONT, METERING_OFF),
    ("analytics on / off (SPEC 15 sketches)", KEYFRONT, ANALYTICS_OFF),
    ("keyfront: uvloop (default) / asyncio loop", KEYFRONT, ASYNCIO_LOOP),
    ("listener fast path on / off (issue 20)", KEYFRONT, FAST_PATH_OFF),
    ("keyfront / aiohttp floor (uvloop)", KEYFRONT, FLOOR_UVLOOP),
    ("aiohttp floor: uvloop / asyncio", FLOOR_UVLOOP, FLOOR_ASYNCIO),
    ("this checkout / --baseline checkout", KEYFRONT, BASELINE),
    ("imported external key / keyfront key (SPEC 13: within 5%)", EXTERNAL, KEYFRONT),
)
Row = tuple[str, str, str]  # a SPEC target, what was measured, whether it is met


@dataclass
class Parts:
    bench: Bench
    results: Results
    plan: list[tuple[Cell, list[Target]]]
    rounds: int
    duration: float
    floods: list[scenarios.FloodResult] = field(default_factory=list)
    garbage_calls: scenarios.StoreCalls | None = None
    opaque_calls: scenarios.StoreCalls | None = None  # made-up keys of an existing system's shape
    cold: list[scenarios.ColdResult] = field(default_factory=list)
    streams: list[scenarios.StreamResult] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)  # tool, server, load -> summary
    load_at_start: str = ""  # /proc/loadavg before anything started
    instructions: str = ""  # bench/instructions.py's table, if it ran


def render(parts: Parts) -> str:
    sections = [
        _header(parts),
        main_table(parts.results, parts.plan),
        "" if parts.bench.only_tls else ratio_table(parts.results, CELLS, COMPARISONS),
        _read_size_table(parts),
        _flood_table(parts),
        _cold_table(parts),
        _stream_table(parts),
        _targets_table(parts),
        parts.instructions,
    ]
    for load, summary in parts.profiles.items():
        sections.append(f"{load}:\n\n```\n{summary}\n```")
    return "\n\n".join(s for s in sections if s)


def _header(parts: Parts) -> str:
    info = machine()
    bench = parts.bench
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if bench.mode == "cache":
        serves = "keyfront's hits: its disk cache (HTTP origin route)"
    else:
        serves = (
            "keyfront's hits: a file:// route over the same objects (the HTTP route did not "
            "answer X-Cache: HIT, or --keyfront-path file)"
        )
    x_cache = ", ".join(f"{label} {'/'.join(v.values())}" for label, v in bench.x_cache.items())
    lines = [
        f"keyfront vs nginx, {when}: {parts.rounds} interleaved rounds of "
        f"{parts.duration:g} s wrk runs (wrk -t1, pinned apart from the servers).",
        f"Machine: {info['nproc']} CPUs, {info['cpu']}, Linux {info['kernel']}, "
        f"Python {info['python']}, nginx {info['nginx']}.",
        f"{serves}. X-Cache after warming (10 KB/1 MB): {x_cache}.",
        f"Load average (1, 5, 15 min) before the run: {parts.load_at_start}; "
        f"after: {loadavg()}. 'others on core': the server core's time spent on "
        "processes not in the benchmark.",
        "Figures: medians over rounds; x columns: median of same-round ratios.",
    ]
    if bench.tls_targets:
        lines.append(
            "TLS rows: nginx and keyfront load the same ECDSA P-256 certificate (a private "
            "CA's leaf for 127.0.0.1), TLS 1.2 and 1.3 with Mozilla's intermediate ciphers "
            "(wrk negotiates TLS 1.3, TLS_AES_256_GCM_SHA384), no session resumption on "
            "either (checked at set-up: a second connection offering the first's session "
            "got a full handshake from both). 'TLS handshake' rows: wrk with "
            "`Connection: close`, a new connection and a full handshake every request."
        )
    disturbed, runs = parts.results.disturbed()
    if disturbed:
        lines.append(
            f"WARNING: in {disturbed} of {runs} runs other processes took at least "
            f"{100 * DISTURBED:.0f}% of the server core: rerun on a quieter machine, or "
            "with more --rounds, before trusting the figures they touch."
        )
    return "\n".join(f"- {line}" for line in lines)


def _flood_table(parts: Parts) -> str:
    if not parts.floods:
        return ""
    lines = [
        "| garbage-key flood (valid c64 + garbage c8) | valid req/s alone "
        "| valid req/s flooded | garbage req/s | valid slowdown |",
        "|---|--:|--:|--:|--:|",
    ]
    for flood in parts.floods:
        bad = f" ({flood.valid_errors} valid errors!)" if flood.valid_errors else ""
        lines.append(
            f"| {flood.label}{bad} | {statistics.median(flood.alone):,.0f} "
            f"| {statistics.median(flood.flooded):,.0f} | {statistics.median(flood.garbage):,.0f} "
            f"| {100 * flood.slowdown:.0f}% |"
        )
    calls = parts.garbage_calls
    if calls is not None:
        lines.append(
            f"\nGarbage keys only (keyfront, Redis store, c64): {calls.requests:,} requests, "
            f"{calls.cpu_us_per_request:.0f} µs CPU each; Redis commands meanwhile: "
            f"{_commands(calls.calls)} (in a pause as long: {_commands(calls.idle_calls)})."
        )
    opaque = parts.opaque_calls
    if opaque is not None:
        lines.append(
            f"\nOpaque made-up keys only (SPEC 13, not imported): {opaque.requests:,} "
            f"requests, {opaque.cpu_us_per_request:.0f} µs CPU each; Redis commands "
            f"meanwhile: {_commands(opaque.calls)} (in a pause as long: "
            f"{_commands(opaque.idle_calls)})."
        )
    return "\n".join(lines)


def _commands(calls: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(calls.items())) or "none"


def _cold_table(parts: Parts) -> str:
    if not parts.cold:
        return ""
    lines = [
        "| 1,000 concurrent requests, one cold object | origin fetches | answers | seconds |",
        "|---|--:|---|--:|",
    ]
    for cold in parts.cold:
        answers = ", ".join(f"{n}x {k}" for k, n in sorted(cold.statuses.items()))
        lines.append(f"| {cold.label} | {cold.origin_fetches} | {answers} | {cold.seconds:.1f} |")
    return "\n".join(lines)


def _stream_table(parts: Parts) -> str:
    if not parts.streams:
        return ""
    lines = [
        "| 2 GiB through keyfront | received | MB/s | VmRSS before | RSS growth |",
        "|---|--:|--:|--:|--:|",
    ]
    for s in parts.streams:
        lines.append(
            f"| {s.label} | {s.received / 1024**3:.2f} GiB | {s.received / 1e6 / s.seconds:,.0f} "
            f"| {s.rss_before / 1024**2:.0f} MiB | {s.growth_mib:.1f} MiB |"
        )
    return "\n".join(lines)


def _targets_table(parts: Parts) -> str:
    lines = ["| SPEC section 12 target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {verdict} |" for name, measured, verdict in _targets(parts)]
    return "\n".join(lines)


def _targets(parts: Parts) -> list[Row]:
    rows = [] if parts.bench.only_tls else _plain_targets(parts.results)
    rows += _tls_targets(parts.results)
    rows += _scenario_targets(parts)
    return rows


def _tls_targets(r: Results) -> list[Row]:
    """SPEC section 12 over TLS, against nginx with the same certificate."""
    if not r.has(TLS_10K_C64, KEYFRONT):
        return []
    ratio = r.ratio(TLS_10K_C64, KEYFRONT, NGINX, rps)
    ratio8 = r.ratio(TLS_10K_C8, KEYFRONT, NGINX, rps)
    cpu64 = r.ratio(TLS_1M_C64, KEYFRONT, NGINX, cpu)
    cpu8 = r.ratio(TLS_1M_C8, KEYFRONT, NGINX, cpu)
    worst = max(cpu64 or 99.0, cpu8 or 99.0)
    shakes = r.ratio(HANDSHAKES, KEYFRONT, NGINX, rps)
    return [
        (
            "10 KB hits over TLS: ≥ 0.5x nginx req/s",
            f"{_x(ratio)} at c64, {_x(ratio8)} at c8",
            _met(ratio is not None and ratio >= 0.5),
        ),
        (
            "1 MB hits over TLS: CPU/request ≤ 1.5x nginx",
            f"{_x(cpu64)} at c64, {_x(cpu8)} at c8",
            _met(worst <= 1.5),
        ),
        (
            "TLS handshakes/s, new connection per request (no target)",
            f"keyfront {r.median(HANDSHAKES, KEYFRONT, rps):,.0f}/s, nginx "
            f"{r.median(HANDSHAKES, NGINX, rps):,.0f}/s: {_x(shakes)}",
            "-",
        ),
    ]


def _read_size_table(parts: Parts) -> str:
    """keyfront's 1 MB hits over TLS by the piece the body is read and written in."""
    r = parts.results
    labels = [label for label in parts.bench.tls_targets if label.startswith(READ_SIZE_PREFIX)]
    if not labels or not r.has(TLS_1M_C64, KEYFRONT):
        return ""
    lines = [
        "| 1 MB hits over TLS, keyfront | CPU µs/req c64 | x nginx CPU c64 | CPU µs/req c8 "
        "| x nginx CPU c8 | req/s c64 | VmRSS after |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for label in [KEYFRONT, *labels]:
        name = "keyfront (this checkout's read size)" if label == KEYFRONT else label
        rss = rss_bytes(parts.bench.tls_targets[label].server.proc.pid) / 1024**2
        lines.append(
            f"| {name} | {r.median(TLS_1M_C64, label, cpu):.0f} "
            f"| {_x(r.ratio(TLS_1M_C64, label, NGINX, cpu))} "
            f"| {r.median(TLS_1M_C8, label, cpu):.0f} "
            f"| {_x(r.ratio(TLS_1M_C8, label, NGINX, cpu))} "
            f"| {r.median(TLS_1M_C64, label, rps):,.0f} | {rss:.0f} MiB |"
        )
    return "\n".join(lines)


def _plain_targets(r: Results) -> list[Row]:
    rows = []
    ratio = r.ratio(TEN_KB_C64, KEYFRONT, NGINX, rps)
    ratio8 = r.ratio(TEN_KB_C8, KEYFRONT, NGINX, rps)
    rows.append(
        (
            "10 KB hits, every check on: ≥ 0.35x nginx req/s",
            f"{_x(ratio)} at c64, {_x(ratio8)} at c8",
            _met(ratio is not None and ratio >= 0.35),
        )
    )
    p99 = r.median(TEN_KB_C8, KEYFRONT, lambda s: s.wrk.p99_ms)
    rows.append(("10 KB hits: p99 at 8 connections < 3 ms", f"{p99:.2f} ms", _met(p99 < 3.0)))
    if r.has(ONE_MB_C64, KEYFRONT):  # not with `--only checks`
        cpu64 = r.ratio(ONE_MB_C64, KEYFRONT, NGINX, cpu)
        cpu8 = r.ratio(ONE_MB_C8, KEYFRONT, NGINX, cpu)
        worst = max(cpu64 or 99.0, cpu8 or 99.0)
        rows.append(
            (
                "1 MB hits: CPU/request ≤ 1.0x nginx (issue 6: 1.5x)",
                f"{_x(cpu64)} at c64, {_x(cpu8)} at c8",
                _met(worst <= 1.0, "1.5x" if worst <= 1.5 else ""),
            )
        )
    checks = r.ratio(TEN_KB_C64, KEYFRONT, AUTH_OFF, rps)
    rows.append(
        (
            "checks cost ≤ 10% vs auth off (10 KB c64)",
            _cost(checks),
            _met(checks is not None and checks >= 0.90),
        )
    )
    analytics = r.ratio(TEN_KB_C64, KEYFRONT, ANALYTICS_OFF, rps)
    if analytics is not None:
        rows.append(
            (
                "per-key analytics cost ≤ 3% vs analytics off (10 KB c64)",
                _cost(analytics),
                _met(analytics >= 0.97),
            )
        )
    return rows


def _scenario_targets(parts: Parts) -> list[Row]:
    rows = []
    if parts.garbage_calls is not None:
        calls = parts.garbage_calls.attributable
        measured = f"{calls} Redis commands beyond an idle pause's (PING aside)"
        rows.append(("garbage keys: no store call", measured, _met(calls == 0)))
    if parts.opaque_calls is not None:
        calls = parts.opaque_calls.attributable
        measured = f"{calls} Redis commands beyond an idle pause's (PING aside)"
        rows.append(("opaque made-up keys: no store call", measured, _met(calls == 0)))
    rows += [_flood_row(flood) for flood in parts.floods if flood.label == KEYFRONT]
    rows += [_cold_row(cold) for cold in parts.cold if cold.label == KEYFRONT]
    rows += [_stream_row(stream) for stream in parts.streams]
    return rows


def _flood_row(flood: scenarios.FloodResult) -> Row:
    slowdown = flood.slowdown
    return (
        "garbage flood slows valid traffic ≤ 10%",
        f"{100 * slowdown:.0f}%",
        _met(slowdown <= 0.1),
    )


def _cold_row(cold: scenarios.ColdResult) -> Row:
    fetches = cold.origin_fetches
    target = "1,000 concurrent cold requests: 1 origin fetch"
    return (target, f"{fetches} origin fetches", _met(fetches == 1))


def _stream_row(stream: scenarios.StreamResult) -> Row:
    whole = stream.received == 2 * 1024**3
    return (
        f"2 GiB stream, {stream.label}: RSS growth < 64 MiB",
        f"{stream.growth_mib:.1f} MiB" + ("" if whole else " (body cut short!)"),
        _met(stream.growth_mib < 64 and whole),
    )


def _cost(ratio: float | None) -> str:
    """keyfront with checks against auth off, as what the checks cost."""
    if ratio is None:
        return "-"
    if ratio > 1:
        return f"{100 * (ratio - 1):.0f}% more req/s with checks (noise)"
    return f"{100 * (1 - ratio):.0f}% fewer req/s"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _met(ok: bool, partly: str = "") -> str:
    if ok:
        return "yes"
    return f"no (within {partly})" if partly else "no"
