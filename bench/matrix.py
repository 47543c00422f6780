"""The interleaved rounds and what is printed of them.

Every round runs every (object, connections) cell against every variant, one after
the other, the order rotated each round so that no variant always runs first or last.
A variant's figure is the median of its rounds; a ratio is taken within each round
(keyfront's run against the nginx run of the same round) and the median of those
ratios is printed. On a noisy 2-core machine the ratio of neighbouring runs is far
steadier than either absolute figure (docs/dependencies.md: "ratios from one run are
what to trust").
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .load import Sample, measure
from .servers import OBJECTS, Target
from .system import Cores, Processes

NGINX = "nginx"
DISTURBED = 0.25  # a run whose server core went this much to other processes
SIZE_NAMES = {"10k": "10 KB", "1m": "1 MB"}


@dataclass(frozen=True)
class Cell:
    size: str  # a key of OBJECTS
    connections: int
    tls: bool = False  # over HTTPS (SPEC section 14), against nginx with the same certificate
    new_connection: bool = False  # `Connection: close`: a TLS handshake every request

    def __str__(self) -> str:
        name = f"{SIZE_NAMES[self.size]} c{self.connections}"
        if self.new_connection:
            return f"TLS handshake + {name}"
        return f"{name} TLS" if self.tls else name


@dataclass
class Results:
    """Samples by (cell, variant label), one per round, in round order."""

    samples: dict[tuple[Cell, str], list[Sample]] = field(default_factory=dict)

    def add(self, cell: Cell, label: str, sample: Sample) -> None:
        self.samples.setdefault((cell, label), []).append(sample)

    def has(self, cell: Cell, label: str) -> bool:
        return (cell, label) in self.samples

    def median(self, cell: Cell, label: str, metric: Callable[[Sample], float]) -> float:
        return statistics.median(metric(s) for s in self.samples[(cell, label)])

    def ratio(
        self, cell: Cell, label: str, versus: str, metric: Callable[[Sample], float]
    ) -> float | None:
        """Median over rounds of metric(label) / metric(versus) in the same round."""
        if not (self.has(cell, label) and self.has(cell, versus)):
            return None
        pairs = zip(self.samples[(cell, label)], self.samples[(cell, versus)], strict=True)
        return statistics.median(metric(a) / metric(b) for a, b in pairs if metric(b) > 0)

    def disturbed(self) -> tuple[int, int]:
        """(runs whose server core went DISTURBED or more to other processes, runs)."""
        samples = [s for runs in self.samples.values() for s in runs]
        return sum(s.others >= DISTURBED for s in samples), len(samples)

    def errors(self, cell: Cell, label: str) -> int:
        return sum(s.wrk.non_2xx + s.wrk.socket_errors for s in self.samples[(cell, label)])


def rps(sample: Sample) -> float:
    return sample.wrk.rps


def cpu(sample: Sample) -> float:
    return sample.cpu_us_per_request


def run_rounds(
    plan: Sequence[tuple[Cell, Sequence[Target]]],
    rounds: int,
    duration: float,
    cores: Cores,
    procs: Processes,
) -> Results:
    results = Results()
    for round_index in range(rounds):
        for cell, targets in plan:
            shift = round_index % len(targets)
            for target in [*targets[shift:], *targets[:shift]]:
                procs.check_alive()
                url = target.url(OBJECTS[cell.size][0])
                server = target.server
                sample = measure(
                    cores,
                    url,
                    server.pids(),
                    cell.connections,
                    duration,
                    store_pids=server.store_pids,
                    close=cell.new_connection,
                )
                results.add(cell, target.label, sample)
                _progress(round_index, rounds, cell, target.label, sample)
    return results


def _progress(index: int, rounds: int, cell: Cell, label: str, sample: Sample) -> None:
    wrk = sample.wrk
    bad = f"  {wrk.non_2xx + wrk.socket_errors} ERRORS" if wrk.non_2xx + wrk.socket_errors else ""
    if sample.others >= DISTURBED:
        bad += f"  (other processes took {100 * sample.others:.0f}% of the server core)"
    print(
        f"round {index + 1}/{rounds}  {cell!s:11} {label:24} {wrk.rps:9,.0f} req/s  "
        f"p50 {wrk.p50_ms:6.2f} ms  p99 {wrk.p99_ms:6.2f} ms  "
        f"{sample.cpu_us_per_request:6.0f} µs/req{bad}",
        file=sys.stderr,
        flush=True,
    )


# --- tables (Markdown, so they paste into docs/performance.md as they are) ------------


def main_table(results: Results, plan: Sequence[tuple[Cell, Sequence[Target]]]) -> str:
    lines = [
        "| object, connections | server | req/s | p50 ms | p99 ms | CPU µs/req | in kernel "
        "| core busy | others on core | x nginx req/s | x nginx CPU/req | + Redis CPU µs/req |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for cell, targets in plan:
        for target in targets:
            lines.append(_main_row(results, cell, target.label))
    return "\n".join(lines)


def _main_row(results: Results, cell: Cell, label: str) -> str:
    def p50(s: Sample) -> float:
        return s.wrk.p50_ms

    def p99(s: Sample) -> float:
        return s.wrk.p99_ms

    errors = results.errors(cell, label)
    name = f"{label} ({errors} errors!)" if errors else label
    cells = [
        f"{results.median(cell, label, rps):,.0f}",
        f"{results.median(cell, label, p50):.2f}",
        f"{results.median(cell, label, p99):.2f}",
        f"{results.median(cell, label, cpu):.0f}",
        f"{100 * results.median(cell, label, lambda s: s.system_share):.0f}%",
        f"{100 * results.median(cell, label, lambda s: s.busy):.0f}%",
        f"{100 * results.median(cell, label, lambda s: s.others):.0f}%",
        _times(results.ratio(cell, label, NGINX, rps) if label != NGINX else None),
        _times(results.ratio(cell, label, NGINX, cpu) if label != NGINX else None),
        _store_cpu(results, cell, label),
    ]
    return f"| {cell} | {name} | " + " | ".join(cells) + " |"


def _store_cpu(results: Results, cell: Cell, label: str) -> str:
    used = results.median(cell, label, lambda s: s.store_cpu_us_per_request)
    return f"{used:.0f}" if used > 0 else ""


def _times(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}x"


def ratio_table(
    results: Results, cells: Sequence[Cell], comparisons: Sequence[tuple[str, str, str]]
) -> str:
    """Same-round req/s ratios, e.g. ("checks on / auth off", "keyfront", "keyfront auth off")."""
    head = "| req/s, same-round median ratio | " + " | ".join(str(c) for c in cells) + " |"
    lines = [head, "|---|" + "--:|" * len(cells)]
    for name, label, versus in comparisons:
        ratios = [_times(results.ratio(cell, label, versus, rps)) or "-" for cell in cells]
        lines.append(f"| {name} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)
