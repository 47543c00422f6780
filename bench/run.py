"""`make bench`: keyfront against nginx in one run, as SPEC section 12 asks.

    python -m bench.run [--quick] [--rounds N] [--duration S] [--profile] ...

What it does, in order:

1. installs what is missing (nginx, wrk, redis-server from Debian packages);
2. creates the objects (10 KB, 1 MB, a sparse 2 GiB file) in a temporary folder and
   starts, all on 127.0.0.1 and pinned to the server core: the HTTP origin
   (bench/origin.py), redis-server, nginx as SPEC section 12's reference (proxy_cache
   on disk in front of the origin, secure_link, valid_referers, limit_req far above
   what is reached; one worker), and keyfront on a redis:// store (every check on, the
   SPEC's configuration) and on a sqlite:// store, each with a customer and a key made
   through the CLI, rate limits far above what is reached, access log off; for the TLS
   rows (SPEC sections 12 and 14; `--no-tls` skips them) an ECDSA P-256 certificate
   made with openssl, loaded by nginx's HTTPS listener (the same worker) and by a
   keyfront started with `tls:` (bench/tls_keyfront.py), neither resuming sessions;
3. warms both caches and checks every URL answers 200 with the whole object;
4. runs the rounds: every cell (10 KB / 1 MB at 64 / 8 connections, plain and over
   TLS, and a TLS handshake with every request) against every variant, interleaved
   (A B C A B C ...; the order rotated each round), each run a bounded
   `wrk -t1 --latency` pinned to the client core, the server's CPU read from
   /proc/<pid>/stat before and after. `--only tls` runs the TLS cells, and plain HTTP
   at 64 connections, for nginx and keyfront alone, in a few minutes; with
   `--profile` it also records where their CPU goes (py-spy, perf);
5. runs the scenario checks (garbage-key flood, 1,000 cold requests, 2 GiB stream);
6. prints Markdown tables: medians over rounds and same-round ratios, then SPEC
   section 12's targets against what was measured.

Why this method: a 2-core VM is noisy (other tenants, turbo, the page cache), so the
absolute figures of one run drift by 10-20% between runs. Pinning keeps the load
generator from taking the server's core; interleaving puts every variant under the same
drift; medians drop the odd bad run; and a ratio taken between runs of the same round
cancels most of what the machine does meanwhile (docs/dependencies.md: ratios from one run are
what to trust).

Until keyfront has its disk cache, its "hits" are served from a file:// route over the
same objects (X-Cache: BYPASS); once the cache answers X-Cache: HIT on the HTTP route,
that route is measured instead (`--keyfront-path auto`, the default).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import yaml

from . import compression, instructions, report, scenarios
from .load import FLOOD_LUA, OPAQUE_FLOOD_LUA
from .matrix import SIZE_NAMES, Cell, run_rounds
from .profile import perf_split, profile
from .servers import SPARSE_2G, Target
from .setup import EXTERNAL, Bench, Launcher, Options, set_up
from .system import BenchError, Cores, Processes, ensure_tools, loadavg, raise_file_limit

MAX_READ_SIZES = 10  # Redis databases 6 to 15, beside the TLS instance's (setup.TLS_DB)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.run", description="keyfront against nginx")
    add = parser.add_argument
    add("--quick", action="store_true", help="1 round of 3 s runs (development)")
    add("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    add("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    add("--no-flood", dest="flood", action="store_false", help="skip the garbage-key flood")
    add("--no-cold", dest="cold", action="store_false", help="skip 1,000 cold requests")
    add("--no-stream", dest="stream", action="store_false", help="skip the 2 GiB stream")
    add("--profile", action="store_true", help="py-spy keyfront during one extra run")
    add("--compression", action="store_true", help="then bench/compression.py (SPEC 17)")
    add(
        "--keyfront-path",
        choices=("auto", "cache", "file"),
        default="auto",
        help="what serves keyfront's hits (auto: the disk cache once it answers HIT)",
    )
    add(
        "--no-metering",
        dest="metering",
        action="store_false",
        help="skip the metering on / off comparison",
    )
    add(
        "--metering-off-yaml",
        default="",
        metavar="YAML",
        help="config overlay that turns metering off (default: the bench.nometer launcher)",
    )
    add("--no-floor", dest="floor", action="store_false", help="skip the aiohttp floor")
    add(
        "--no-instructions",
        dest="instructions",
        action="store_false",
        help="skip counting instructions per hit under callgrind (bench/instructions.py)",
    )
    add("--no-tls", dest="tls", action="store_false", help="skip the TLS rows")
    add(
        "--only",
        choices=("tls", "checks"),
        help="tls: only the TLS rows (nginx and keyfront over HTTPS; no other variant, "
        "no scenario): a few minutes. checks: only 10 KB hits of nginx and keyfront with "
        "every check, auth off, metering off and analytics off (SPEC 12's 10%% and 3%%)",
    )
    add(
        "--tls-read-sizes",
        default="",
        metavar="KIB,...",
        help="also run keyfront over TLS reading large bodies in these pieces (1 MB rows)",
    )
    add(
        "--baseline",
        metavar="PYTHON",
        help="also run another checkout's keyfront (its venv's python), interleaved, to "
        "judge a change against its parent in one run",
    )
    add("--client-core", type=int, default=0)
    add("--server-core", type=int, default=1)
    add("--markdown", type=Path, metavar="FILE", help="also write the report here")
    add("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    only_tls = args.only == "tls"
    if only_tls:
        if not args.tls:
            parser.error("--only tls and --no-tls exclude each other")
        args.flood = args.cold = args.stream = args.metering = args.floor = False
    only_checks = args.only == "checks"
    if only_checks:
        args.flood = args.cold = args.stream = args.floor = args.tls = False
        args.metering = True
    args.options = Options(
        args.keyfront_path,
        args.metering,
        yaml.safe_load(args.metering_off_yaml) or {},
        args.floor,
        args.baseline,
        tls=args.tls,
        only_tls=only_tls,
        only_checks=only_checks,
        tls_read_sizes=tuple(int(n) * 1024 for n in args.tls_read_sizes.split(",") if n),
    )
    if len(args.options.tls_read_sizes) > MAX_READ_SIZES:
        parser.error(f"--tls-read-sizes: at most {MAX_READ_SIZES} (one Redis database each)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.load_at_start = loadavg()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)  # SIGINT too: a background job starts with it ignored
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="keyfront-bench-"))
    root.chmod(0o755)  # nginx's worker (nobody, when run as root) enters it
    procs = Processes(root)
    try:
        ensure_tools()
        raise_file_limit()
        cores = Cores.pick(args.client_core, args.server_core)
        cores.pin_self()
        bench = set_up(procs, cores, root, args.options)
        text = measure_all(args, bench, cores, procs)
    except KeyboardInterrupt:
        print("interrupted: stopping what was started", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        procs.stop_all()
        if args.keep:
            print(f"configs and logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    text += f"\n\nWhole run: {time.monotonic() - started:.0f} s.\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def measure_all(args: argparse.Namespace, bench: Bench, cores: Cores, procs: Processes) -> str:
    plan = bench.plan()
    _estimate(args, plan)
    results = run_rounds(plan, args.rounds, args.duration, cores, procs)
    parts = report.Parts(bench, results, plan, args.rounds, args.duration)
    parts.load_at_start = args.load_at_start
    if args.flood:
        _flood(args, bench, cores, parts)
    if args.cold:
        parts.cold = [scenarios.cold(t, bench.origin) for t in bench.cold_targets()]
    if args.stream:
        parts.streams = _streams(bench)
    if args.profile:
        parts.profiles = _profiles(args, bench, cores)
    if args.instructions and not bench.only_tls:
        launch = Launcher(procs, cores, bench.root, bench.origin, bench.root / "objects")
        counts = instructions.measure(launch, f"redis://127.0.0.1:{bench.redis_port}", bench.root)
        parts.instructions = instructions.render(counts)
    if args.compression:  # its own origin and keyfront, under the same root
        extra = compression.measure(procs, cores, bench.root / "compression", 3, args.duration)
        return report.render(parts) + "\n\n" + extra
    return report.render(parts)


def _flood(args: argparse.Namespace, bench: Bench, cores: Cores, parts: report.Parts) -> None:
    script = bench.root / "flood.lua"
    targets = [bench.targets["nginx"], bench.targets["keyfront"]]
    parts.floods = scenarios.flood(cores, targets, min(args.rounds, 3), args.duration, script)
    parts.garbage_calls = scenarios.garbage_store_calls(
        cores, bench.targets["keyfront"], bench.redis_port, args.duration, script
    )
    if EXTERNAL in bench.targets:  # this keyfront knows keys of existing systems
        opaque = bench.root / "flood-opaque.lua"
        opaque.write_text(OPAQUE_FLOOD_LUA)
        parts.opaque_calls = scenarios.garbage_store_calls(
            cores, bench.targets["keyfront"], bench.redis_port, args.duration, opaque
        )


def _profiles(args: argparse.Namespace, bench: Bench, cores: Cores) -> dict[str, str]:
    if bench.only_tls:
        return _tls_profiles(bench, cores)
    target = bench.targets["keyfront"]
    script = bench.root / "flood.lua"
    script.write_text(FLOOD_LUA)
    duration = max(args.duration, 5.0)
    return {
        "py-spy, keyfront, 10 KB hits, c64": profile(
            cores, target, duration, bench.root / "profile-hits.txt"
        ),
        "py-spy, keyfront, garbage keys, c64": profile(
            cores, target, duration, bench.root / "profile-garbage.txt", script
        ),
    }


def _tls_profiles(bench: Bench, cores: Cores) -> dict[str, str]:
    """Where the time of a hit over TLS goes: py-spy of keyfront's 1 MB hits, and perf
    by shared object of both servers over TLS and of keyfront's plain sendfile."""
    tls, plain, root = bench.tls_targets, bench.targets, bench.root
    out = {
        "py-spy, keyfront, 1 MB hits over TLS, c64": profile(
            cores, tls["keyfront"], 5.0, root / "profile-tls-1m.txt", size="1m"
        )
    }
    cases = [
        ("keyfront", tls, "1m", "over TLS"),
        ("nginx", tls, "1m", "over TLS"),
        ("keyfront", plain, "1m", "plain HTTP (sendfile)"),
        ("keyfront", tls, "10k", "over TLS"),
        ("nginx", tls, "10k", "over TLS"),
        ("keyfront", plain, "10k", "plain HTTP"),
        ("keyfront", tls, "10k", "over TLS, a new connection (full handshake) each"),
        ("nginx", tls, "10k", "over TLS, a new connection (full handshake) each"),
    ]
    for label, targets, size, how in cases:
        data = root / f"perf-{label}-{size}-{len(out)}.data"
        summary = perf_split(cores, targets[label], 5.0, data, size=size, close="new" in how)
        out[f"perf, {label}, {SIZE_NAMES[size]} hits {how}, c64"] = summary
    return out


def _streams(bench: Bench) -> list[scenarios.StreamResult]:
    """2 GiB through keyfront: from the HTTP origin and from the sparse file."""
    kf = bench.keyfront
    pid = kf.server.proc.pid
    cases = [
        ("HTTP origin (/request/)", Target("", kf.server, f"/request/{{name}}?key={kf.key}")),
        ("file origin (/files/)", Target("", kf.server, f"/files/{{name}}?key={kf.key}")),
    ]
    names = {"HTTP origin (/request/)": "stream-2g.bin", "file origin (/files/)": SPARSE_2G}
    return [scenarios.stream(label, t.url(names[label]), pid) for label, t in cases]


def _estimate(args: argparse.Namespace, plan: list[tuple[Cell, list[Target]]]) -> None:
    runs = args.rounds * sum(len(targets) for _, targets in plan)
    seconds = runs * (args.duration + 0.5)
    if args.flood:
        seconds += min(args.rounds, 3) * 2 * (2 * args.duration + 1) + args.duration
    print(
        f"{runs} runs of {args.duration:g} s in {args.rounds} rounds; "
        f"about {seconds / 60:.1f} min plus the cold and 2 GiB checks",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
