"""Shared machinery of the benchmarks: measuring, ratios, tables, JSON, charts, and the
one way a benchmark starts a child process (``fork_child`` / ``reap``, ``spawn`` / ``ready``).

Design rules:

- A benchmark module ``bench/<component>.py`` defines ``run(report, args)`` and
  ``main(argv) -> int = harness.main_for(<component>, run)``.  ``run`` adds measurements
  with :meth:`Report.add`: a case (what is measured), an implementation (``mmapkit`` or a
  peer), a unit, and several samples.
- The machine is small and noisy: every figure is a median over repeats (p99 where
  latency matters), and what we quote is the ratio mmapkit/peer from *the same run*.
- Peers missing on this machine are skipped with a note, never faked.
- Benchmarks are not tests: nothing here asserts a speed.
- Children are started here only: a fork child leaves by ``os._exit`` (it must not run the
  parent's atexit handlers or flush its buffers a second time) and a child that failed
  makes the case raise, never report a figure; a spawned child is an unrelated
  ``python`` that imports this checkout.  (tests/conftest.py keeps its own copy; its
  comment says why.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

OURS = "mmapkit"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout


@dataclass
class Measurement:
    case: str
    impl: str
    unit: str
    samples: list[float]
    higher_is_better: bool = True
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)


@dataclass
class Report:
    component: str
    quick: bool = False
    measurements: list[Measurement] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    targets: list[tuple[str, str, str, float]] = field(default_factory=list)

    def add(self, case: str, impl: str, samples: Sequence[float], unit: str, *,
            higher_is_better: bool = True, note: str = "") -> Measurement:
        m = Measurement(case, impl, unit, list(samples), higher_is_better, note)
        self.measurements.append(m)
        print(f"  {case:<34} {impl:<22} {fmt(m.median)} {unit}"
              + (f"  (p99 {fmt(m.p99)})" if not higher_is_better and len(m.samples) > 20 else ""),
              file=sys.stderr, flush=True)
        return m

    def skip(self, impl: str, why: str) -> None:
        self.skipped[impl] = why
        print(f"  skipped {impl}: {why}", file=sys.stderr, flush=True)

    def target(self, case: str, peer: str, op: str, ratio: float) -> None:
        """Record a goal: mmapkit/peer for ``case`` should be ``op`` (">=" or "<=") ``ratio``."""
        self.targets.append((case, peer, op, ratio))

    def find(self, case: str, impl: str) -> Measurement | None:
        for m in self.measurements:
            if m.case == case and m.impl == impl:
                return m
        return None

    def ratios(self) -> list[dict[str, Any]]:
        """mmapkit / peer of the medians, per case and peer."""
        rows = []
        for ours in (m for m in self.measurements if m.impl.startswith(OURS)):
            for peer in self.measurements:
                if peer.case != ours.case or peer.impl.startswith(OURS) or not peer.median:
                    continue
                ratio = ours.median / peer.median
                better = ratio >= 1 if ours.higher_is_better else ratio <= 1
                rows.append({"case": ours.case, "ours": ours.impl, "peer": peer.impl,
                             "ratio": ratio, "better": better, "unit": ours.unit,
                             "ours_median": ours.median, "peer_median": peer.median})
        return rows

    def target_results(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for case, peer, op, goal in self.targets:
            ours, other = self.find(case, OURS), self.find(case, peer)
            if ours is None or other is None or not other.median:
                out.append({"case": case, "peer": peer, "goal": f"{op} {goal}",
                            "ratio": None, "met": None})
                continue
            ratio = ours.median / other.median
            met = ratio >= goal if op == ">=" else ratio <= goal
            out.append({"case": case, "peer": peer, "goal": f"{op} {goal}", "ratio": ratio,
                        "met": met})
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "quick": self.quick,
            "machine": machine(),
            "measurements": [
                {**asdict(m), "median": m.median, "p99": m.p99, "n": len(m.samples)}
                for m in self.measurements
            ],
            "ratios": self.ratios(),
            "targets": self.target_results(),
            "skipped": self.skipped,
        }

    def markdown(self) -> str:
        lines = [f"### {self.component}", "",
                 f"Machine: {machine()['summary']}. Medians of repeated runs"
                 + (" (quick mode)" if self.quick else "") + ".", "",
                 "| case | implementation | median | p99 | unit |", "|---|---|---:|---:|---|"]
        for m in self.measurements:
            p99 = fmt(m.p99) if not m.higher_is_better and len(m.samples) > 20 else ""
            lines.append(f"| {m.case} | {m.impl} | {fmt(m.median)} | {p99} | {m.unit} |")
        lines += ["", "| case | mmapkit / peer | ratio |", "|---|---|---:|"]
        for r in self.ratios():
            lines.append(f"| {r['case']} | {r['ours']} / {r['peer']} | {r['ratio']:.2f}x |")
        if self.targets:
            lines += ["", "| target | goal | measured | met |", "|---|---|---:|---|"]
            for t in self.target_results():
                got = "n/a" if t["ratio"] is None else f"{t['ratio']:.2f}x"
                met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
                lines.append(f"| {t['case']} vs {t['peer']} | {t['goal']} | {got} | {met} |")
        if self.skipped:
            lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items())]
        return "\n".join(lines) + "\n"

    def table(self) -> str:
        width = max((len(m.case) for m in self.measurements), default=4) + 2
        iw = max((len(m.impl) for m in self.measurements), default=4) + 2
        out = [f"== {self.component} ==",
               f"{'case':<{width}}{'implementation':<{iw}}{'median':>14}{'p99':>12}  unit"]
        for m in self.measurements:
            p99 = fmt(m.p99) if not m.higher_is_better and len(m.samples) > 20 else ""
            out.append(f"{m.case:<{width}}{m.impl:<{iw}}{fmt(m.median):>14}{p99:>12}  {m.unit}")
        out.append("")
        out.append("ratios mmapkit / peer (medians, same run; >1 is better for rates, "
                   "<1 for times and sizes):")
        for r in self.ratios():
            mark = "" if r["better"] else "   (worse)"
            ours = "" if r["ours"] == OURS else f" [{r['ours']}]"
            line = f"  {r['case']:<{width}} vs {r['peer']:<{iw}} {r['ratio']:8.2f}x"
            out.append(line + mark + ours)
        for t in self.target_results():
            got = "n/a" if t["ratio"] is None else f"{t['ratio']:.2f}x"
            met = {True: "met", False: "NOT MET", None: "n/a"}[t["met"]]
            out.append(f"  target {t['case']} vs {t['peer']} {t['goal']}: {got} {met}")
        for impl, why in self.skipped.items():
            out.append(f"  skipped {impl}: {why}")
        return "\n".join(out)


def percentile(samples: Sequence[float], pct: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    k = (len(ordered) - 1) * pct / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def machine() -> dict[str, Any]:
    info = {"python": platform.python_version(), "system": platform.system(),
            "release": platform.release(), "machine": platform.machine(),
            "cpus": os.cpu_count()}
    info["summary"] = (f"{info['cpus']} CPU {info['machine']}, {info['system']} "
                       f"{info['release']}, Python {info['python']}")
    return info


def rate(fn: Callable[[], object], ops: int, repeat: int) -> list[float]:
    """Run ``fn`` (which performs ``ops`` operations) ``repeat`` times; ops per second each."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(ops / (time.perf_counter() - t0))
    return out


def timings(fn: Callable[[], object], repeat: int) -> list[float]:
    """Seconds per call of ``fn``, ``repeat`` times."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def chart(report: Report, path: str) -> None:
    """Bar chart of mmapkit/peer ratios (needs matplotlib, the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.ratios()
    labels = [f"{r['case']}\nvs {r['peer']}" for r in rows]
    values = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.9), 4.5))
    ax.bar(range(len(rows)), values, color=["tab:green" if r["better"] else "tab:red"
                                            for r in rows])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("mmapkit / peer")
    ax.set_title(f"mmapkit {report.component}: ratios to peers (same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser(component: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"bench/{component}.py",
                                description=f"mmapkit {component} vs its peers")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    p.add_argument("--repeat", type=int, default=None, help="repeats per case")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the report as a Markdown section")
    p.add_argument("--chart", metavar="PNG", help="draw the ratios (needs matplotlib)")
    p.add_argument("--only", metavar="IMPL", action="append",
                   help="run only these implementations (mmapkit is always run)")
    return p


def main_for(component: str, run: Callable[[Report, argparse.Namespace], None],
             argv: Sequence[str] | None = None,
             extend: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    p = parser(component)
    if extend is not None:
        extend(p)
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 7
    report = Report(component, quick=args.quick)
    print(f"mmapkit bench {component}: {machine()['summary']}", file=sys.stderr)
    run(report, args)
    print(report.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_json(), f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown())
    if args.chart:
        chart(report, args.chart)
    return 0


def goal(report: Report, case: str, op: str, value: float, unit: str, *,
         stat: str = "median", label: str | None = None) -> None:
    """Print whether our ``stat`` ("median" or "p99") for ``case`` is ``op`` (">=" or
    "<=") ``value``: a goal in absolute terms (a goal as a ratio is ``Report.target``)."""
    m = report.find(case, OURS)
    if m is None:
        return
    got = m.median if stat == "median" else m.p99
    met = got >= value if op == ">=" else got <= value
    print(f"  goal {label or case} {op} {fmt(value)} {unit}: {fmt(got)} {unit} "
          f"{'met' if met else 'NOT MET'}", file=sys.stderr)


def wanted(args: argparse.Namespace, impl: str) -> bool:
    return impl.startswith(OURS) or not args.only or impl in args.only


class _Named(Protocol):
    name: str


_I = TypeVar("_I", bound=_Named)


def runnable(report: Report, args: argparse.Namespace, impls: Sequence[type[_I]],
             unavailable: Callable[[type[_I]], str | None]) -> list[type[_I]]:
    """The implementations to run: those asked for (--only) whose probe works; the others
    are reported as skipped, with ``unavailable``'s reason."""
    out: list[type[_I]] = []
    for cls in impls:
        if not wanted(args, cls.name):
            continue
        why = unavailable(cls)
        if why:
            report.skip(cls.name, why)
        else:
            out.append(cls)
    return out


# --- child processes -------------------------------------------------------------------


def fork_child(body: Callable[[], object]) -> int:
    """Run ``body`` in a fork child and return its pid.  The child exits 0 when ``body``
    returns, 1 (saying why on stderr) when it raises; :func:`reap` collects it."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            body()
            code = 0
        except BaseException as exc:
            os.write(2, f"benchmark child {os.getpid()} failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    return pid


def reap(*pids: int, expect: int = 0) -> None:
    """Wait for fork children ``pids``; RuntimeError if one ended other than with
    ``expect`` (an exit code; negative: the signal, as in ``-signal.SIGKILL``)."""
    failed = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != expect:
            failed.append(f"{pid} (exit {code})")
    if failed:
        raise RuntimeError(f"benchmark children failed: {', '.join(failed)}")


def spawn(*argv: str, stdin: int | None = subprocess.PIPE,
          stderr: int | None = None) -> subprocess.Popen[str]:
    """Start ``python *argv`` (``"-c", CODE, args...`` or ``"-m", module, args...``), an
    unrelated process that imports this checkout, with text pipes on stdin (unless
    ``stdin=None``) and stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, *argv], env=env, text=True, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=stderr)


def ready(child: subprocess.Popen[str], what: str = "a benchmark child") -> None:
    """Wait for ``child``'s first line, which must be ``ready``."""
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(f"{what} failed to start ({line!r})")


@contextlib.contextmanager
def c_program(source: str, name: str, *, linux_only: bool = True) -> Iterator[str | None]:
    """Build ``source`` (C) with the machine's ``cc`` into a temporary directory and yield
    the executable's path, or None when there is no compiler (or, ``linux_only``, no
    Linux) or it does not build: the C floors the benchmarks print beside our figures."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or (linux_only and not sys.platform.startswith("linux")):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=f"mmapkit-bench-{name}-") as tmp:
        src, exe = os.path.join(tmp, f"{name}.c"), os.path.join(tmp, name)
        with open(src, "w") as f:
            f.write(source)
        built = subprocess.run([cc, "-O2", "-o", exe, src], capture_output=True)
        yield None if built.returncode else exe
