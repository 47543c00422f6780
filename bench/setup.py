"""Start everything, decide what keyfront's "hit" is today, warm and check every URL."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .certificate import Certificate, make_certificate, session_resumed
from .matrix import NGINX, Cell
from .servers import (
    ALLOWED_REFERRERS,
    CUSTOMER,
    OBJECTS,
    Keyfront,
    Target,
    config_accepted,
    get,
    keyfront_cli,
    keyfront_config,
    make_objects,
    start_floor,
    start_keyfront,
    start_nginx,
    start_origin,
    start_redis,
)
from .system import BenchError, Cores, Processes

KEYFRONT = "keyfront"  # redis:// store, every check on: SPEC section 12's configuration
AUTH_OFF = "keyfront auth off"
SQLITE = "keyfront sqlite"
METERING_OFF = "keyfront metering off"
ANALYTICS_OFF = "keyfront analytics off"  # usage.analytics: false (SPEC 12: at most 3%)
ASYNCIO_LOOP = "keyfront asyncio loop"  # event_loop: asyncio (the default is uvloop)
FAST_PATH_OFF = "keyfront fast path off"  # listener.fast_path: false (issue 20)
BASELINE = "keyfront baseline"  # --baseline: another checkout, to judge a change in one run
EXTERNAL = "keyfront external key"  # an imported key of an existing key system (SPEC 13)
EXTERNAL_KEY = "bench-existing-key-0123456789"
FLOOR_PREFIX = "aiohttp floor"
CELLS = (Cell("10k", 64), Cell("10k", 8), Cell("1m", 64), Cell("1m", 8))
# Over HTTPS against nginx with the same certificate (SPEC section 12), and a new
# connection, so a full handshake, for every request (the handshakes/s row).
TLS_CELLS = (
    Cell("10k", 64, tls=True),
    Cell("10k", 8, tls=True),
    Cell("1m", 64, tls=True),
    Cell("1m", 8, tls=True),
    Cell("10k", 64, tls=True, new_connection=True),
)
READ_SIZE_PREFIX = "keyfront read"  # --tls-read-sizes: 1 MB TLS hits only
TLS_DB = 5  # the Redis database of the TLS instance; the read-size variants' follow
# (prefix of the keyed route, prefix of the auth: none route) by what serves keyfront's hits
PREFIXES = {"cache": ("/request/", "/open/"), "file": ("/files/", "/files-open/")}
# variants whose point is the per-request cost
TEN_KB_ONLY = (AUTH_OFF, FLOOR_PREFIX, EXTERNAL, ANALYTICS_OFF, FAST_PATH_OFF)


@dataclass(frozen=True)
class Options:
    path: str  # "auto", "cache" or "file": what serves keyfront's hits
    metering: bool  # compare metering on / off
    metering_off_yaml: dict[str, Any]  # a config overlay for "off"; empty: bench.nometer
    floor: bool  # measure the aiohttp floor too
    baseline: str | None = None  # another checkout's venv python (`--baseline`)
    tls: bool = True  # the TLS rows (`--no-tls`)
    only_tls: bool = False  # `--only tls`: nginx and keyfront over TLS, nothing else
    only_checks: bool = False  # `--only checks`: 10 KB hits with checks, metering, analytics off
    tls_read_sizes: tuple[int, ...] = ()  # keyfront over TLS with these read sizes too


@dataclass
class Bench:
    root: Path
    origin: str
    redis_port: int
    keyfront: Keyfront
    mode: str  # "cache": the disk cache answers HIT; "file": the file:// route instead
    targets: dict[str, Target]  # by label, nginx first
    x_cache: dict[str, dict[str, str]] = field(default_factory=dict)  # label -> size -> X-Cache
    tls_targets: dict[str, Target] = field(default_factory=dict)  # the same over HTTPS
    only_tls: bool = False
    only_checks: bool = False

    def plan(self) -> list[tuple[Cell, list[Target]]]:
        """The runs of one round; auth off and the floor only at 10 KB, the read-size
        variants only at 1 MB over TLS. `only_tls`: the TLS cells, and plain HTTP at
        c64 for nginx and keyfront alone."""
        plan = []
        for cell in CELLS:
            if self.only_checks and cell.size != "10k":
                continue
            labels = [
                label
                for label in self.targets
                if cell.size == "10k" or not label.startswith(TEN_KB_ONLY)
            ]
            if self.only_tls:  # what TLS costs: the same servers over plain HTTP, c64
                if cell.connections != 64:
                    continue
                labels = [NGINX, KEYFRONT]
            plan.append((cell, [self.targets[label] for label in labels]))
        for cell in TLS_CELLS if self.tls_targets else ():
            labels = [
                label
                for label in self.tls_targets
                if (cell.size == "1m" and not cell.new_connection)
                or not label.startswith(READ_SIZE_PREFIX)
            ]
            plan.append((cell, [self.tls_targets[label] for label in labels]))
        return plan

    def cold_targets(self) -> list[Target]:
        """The HTTP-origin route of each server: where a cold object is fetched."""
        kf = self.keyfront
        keyed = Target(KEYFRONT, kf.server, f"/request/{{name}}?key={kf.key}")
        return [self.targets[NGINX], keyed]


@dataclass(frozen=True)
class Launcher:
    """What every keyfront instance shares: the processes, cores, origin and objects."""

    procs: Processes
    cores: Cores
    root: Path
    origin: str
    objects: Path

    def keyfront(
        self,
        name: str,
        store: str,
        extra: dict[str, Any] | None = None,
        *,
        module: str = "proxy",
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        ca: Path | None = None,
        wrapper: list[str] | None = None,
        ready_within: float = 15.0,
    ) -> Keyfront:
        folder = self.root / name
        config = keyfront_config(folder, store, self.origin, self.objects, extra or {})
        return start_keyfront(
            self.procs, self.cores, name, folder, config, module=module, python=python,
            env=env, ca=ca, wrapper=wrapper, ready_within=ready_within,
        )  # fmt: skip


def set_up(procs: Processes, cores: Cores, root: Path, options: Options) -> Bench:
    """Start the origin, Redis, nginx and the keyfront instances; warm and check them."""
    objects = root / "objects"
    make_objects(objects)
    origin = start_origin(procs, cores, objects)
    redis_port, redis_pid = start_redis(procs, cores, root / "redis")
    redis = f"redis://127.0.0.1:{redis_port}"
    certificate = make_certificate(root / "tls") if options.tls else None
    nginx, nginx_tls = start_nginx(procs, cores, root / "nginx", origin, certificate)
    launch = Launcher(procs, cores, root, origin, objects)
    kf = launch.keyfront("keyfront", f"{redis}/0")
    instances: dict[str, Keyfront | None] = {KEYFRONT: kf, AUTH_OFF: kf}
    if options.only_checks:  # what each part of the per-request work costs, nothing else
        instances[METERING_OFF] = _metering_off(launch, f"{redis}/2", options)
        instances[ANALYTICS_OFF] = _analytics_off(launch, f"{redis}/1")
        instances[FAST_PATH_OFF] = _fast_path_off(launch, f"{redis}/6")
        if options.baseline:  # the same checkout here measures the bench's own bias
            instances[BASELINE] = launch.keyfront(
                "keyfront-baseline", f"{redis}/4", python=options.baseline
            )
    elif not options.only_tls:
        instances |= _variants(launch, kf, redis, options)
    for label in (KEYFRONT, METERING_OFF, ANALYTICS_OFF, ASYNCIO_LOOP, FAST_PATH_OFF, BASELINE):
        instance = instances.get(label)
        if instance is not None:
            instance.server.store_pids = [redis_pid]  # its CPU is reported beside keyfront's
    mode = options.path if options.path != "auto" else _detect_mode(kf)
    targets = {NGINX: nginx} | _keyfront_targets(instances, *PREFIXES[mode])
    if options.floor and not options.only_tls:
        targets |= {t.label: t for t in _floors(procs, cores, objects)}
    bench = Bench(root, origin, redis_port, kf, mode, targets, only_tls=options.only_tls,
                  only_checks=options.only_checks)  # fmt: skip
    if certificate is not None and nginx_tls is not None:
        tls = _tls_instances(launch, certificate, redis, options.tls_read_sizes)
        for instance in tls.values():
            instance.server.store_pids = [redis_pid]
        bench.tls_targets = {NGINX: nginx_tls} | _keyfront_targets(dict(tls), *PREFIXES[mode])
        _check_full_handshakes(bench.tls_targets.values(), certificate)
    bench.x_cache = {label: warm(target) for label, target in targets.items()}
    bench.x_cache |= {f"{label} TLS": warm(t) for label, t in bench.tls_targets.items()}
    for label in (NGINX, f"{NGINX} TLS"):
        if any(seen != "HIT" for seen in bench.x_cache.get(label, {}).values()):
            raise BenchError(f"{label}'s cache does not hit after warming: {bench.x_cache[label]}")
    return bench


def _variants(
    launch: Launcher, kf: Keyfront, redis: str, options: Options
) -> dict[str, Keyfront | None]:
    """The instances beside `keyfront` that the plain rows compare it with."""
    return {
        SQLITE: launch.keyfront("keyfront-sqlite", f"sqlite://{launch.root}/keyfront-sqlite.db"),
        METERING_OFF: _metering_off(launch, f"{redis}/2", options) if options.metering else None,
        ANALYTICS_OFF: _analytics_off(launch, f"{redis}/1") if options.metering else None,
        ASYNCIO_LOOP: _asyncio_loop(launch, f"{redis}/3"),
        FAST_PATH_OFF: _fast_path_off(launch, f"{redis}/6"),
        EXTERNAL: _imported(kf),
        BASELINE: (
            launch.keyfront("keyfront-baseline", f"{redis}/4", python=options.baseline)
            if options.baseline
            else None
        ),
    }


def _check_full_handshakes(targets: Iterable[Target], certificate: Certificate) -> None:
    """The handshake row needs a full handshake for every new connection on both
    servers: neither may resume a session a client offers (wrk offers its last)."""
    for target in targets:
        if session_resumed(target.server.base, certificate.ca):
            raise BenchError(f"{target.label} over TLS resumes sessions: the handshake row is off")


def _tls_instances(
    launch: Launcher, certificate: Certificate, redis: str, read_sizes: tuple[int, ...]
) -> dict[str, Keyfront]:
    """keyfront with `tls:` and nginx's certificate, through bench.tls_keyfront (no
    session resumption, as nginx there); one instance per read size asked for."""
    pair = {"cert": str(certificate.cert), "key": str(certificate.key)}
    extra = {"tls": {"certificates": [pair]}}
    sizes = {KEYFRONT: None} | {f"{READ_SIZE_PREFIX} {n // 1024} KiB": n for n in read_sizes}
    instances = {}
    for index, (label, size) in enumerate(sizes.items()):
        instances[label] = launch.keyfront(
            f"keyfront-tls-{size or 'default'}",
            f"{redis}/{TLS_DB + index}",
            extra,
            module="bench.tls_keyfront",
            env={"BENCH_READ_SIZE": str(size)} if size else None,
            ca=certificate.ca,
        )
    return instances


def _metering_off(launch: Launcher, store: str, options: Options) -> Keyfront | None:
    """keyfront with metering off: through a config overlay if one is given and this
    keyfront accepts it, else through the bench.nometer launcher."""
    overlay = options.metering_off_yaml
    if overlay:
        if config_accepted(launch.root / "probe", overlay):
            return launch.keyfront("keyfront-metering-off", store, overlay)
        print(f"metering on/off skipped: keyfront refuses {overlay}", file=sys.stderr)
        return None
    return launch.keyfront("keyfront-metering-off", store, module="bench.nometer")


def _analytics_off(launch: Launcher, store: str) -> Keyfront:
    """keyfront counting usage without SPEC section 15's per-key sketches: what they
    cost a hit is this against `keyfront`, same rounds."""
    return launch.keyfront("keyfront-analytics-off", store, {"usage": {"analytics": False}})


def _asyncio_loop(launch: Launcher, store: str) -> Keyfront | None:
    """keyfront on asyncio's own loop, beside the default uvloop; None where this
    keyfront has no `event_loop` setting."""
    overlay = {"event_loop": "asyncio"}
    if not config_accepted(launch.root / "probe-loop", overlay):
        return None
    return launch.keyfront("keyfront-asyncio", store, overlay)


def _fast_path_off(launch: Launcher, store: str) -> Keyfront | None:
    """keyfront with aiohttp's connection for every request (issue 20's listener off);
    None where this keyfront has no `listener.fast_path` setting."""
    overlay = {"listener": {"fast_path": False}}
    if not config_accepted(launch.root / "probe-front", overlay):
        return None
    return launch.keyfront("keyfront-fast-path-off", store, overlay)


def _imported(kf: Keyfront) -> Keyfront | None:
    """The same instance, with a key imported from an existing key system (SPEC section
    13) under the same referrer rule; None where this keyfront cannot import keys."""
    csv = kf.config.parent / "existing-keys.csv"
    csv.write_text(f"key,customer_id,referrers\n{EXTERNAL_KEY},{CUSTOMER},{ALLOWED_REFERRERS}\n")
    try:
        keyfront_cli(kf.config, "keys", "import", str(csv))
    except BenchError as exc:
        print(f"external-key variant skipped: {exc}", file=sys.stderr)
        return None
    return dataclasses.replace(kf, key=EXTERNAL_KEY)


def _floors(procs: Processes, cores: Cores, objects: Path) -> list[Target]:
    loops = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])
    return [start_floor(procs, cores, objects, loop) for loop in loops]


def _keyfront_targets(
    instances: dict[str, Keyfront | None], keyed: str, public: str
) -> dict[str, Target]:
    targets = {}
    for label, instance in instances.items():
        if instance is not None:
            path = (
                f"{public}{{name}}" if label == AUTH_OFF else f"{keyed}{{name}}?key={instance.key}"
            )
            targets[label] = Target(label, instance.server, path)
    return targets


def _detect_mode(kf: Keyfront) -> str:
    """ "cache" once keyfront's disk cache answers a repeated request with X-Cache: HIT."""
    probe = Target(KEYFRONT, kf.server, f"/request/{{name}}?key={kf.key}")
    return "cache" if set(warm(probe).values()) == {"HIT"} else "file"


def warm(target: Target) -> dict[str, str]:
    """GET every object twice (filling any cache), checking each answer is 200 with the
    whole object; the X-Cache of the second answer, by object size. The floor serves
    its 10 KB body at every path, so only 10 KB is asked of it."""
    seen = {}
    for size, (name, length) in OBJECTS.items():
        if target.label.startswith(FLOOR_PREFIX) and size != "10k":
            continue
        for _ in range(2):
            status, headers, got = get(target.url(name), ca=target.server.ca)
            if status != 200 or got != length:
                raise BenchError(f"{target.label}: {name} answered {status} with {got} bytes")
        seen[size] = headers.get("X-Cache", "-")
    return seen
