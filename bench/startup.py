"""Start-up: how long a fresh interpreter takes to import mmapkit, to open a KV, and to
print ``mmapkit --help``, against importing (and opening a store with) lmdb, rocksdict
and diskcache (issue 16).

Every sample is one fresh ``python`` process, timed from the parent (fork/exec and
interpreter start included); the cases are interleaved round by round so that the
machine's noise falls on all of them alike, and each figure is a median (20 rounds by
default).  "over bare python" subtracts the median of ``python -c pass`` in the same run:
that is the cost the library adds.  The children run with byte-code caching on (a
warm-up round writes the .pyc files first), as an installed package does; the module
counts are ``len(sys.modules)`` after the statement minus before it.

"create" makes a new store in an empty directory (mmapkit fsyncs the new file and its
directory); "reopen" opens the one an earlier child made, as an application's start-up
does.

Targets (issue 16): ``import mmapkit`` <= 30 ms, ``import mmapkit; mmapkit.KV(path)``
<= 40 ms, ``mmapkit --help`` <= 120 ms, and <= 60 modules beyond a bare interpreter's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

from . import _harness

# implementation -> (statement for "import", statement for "import + open"; {path} is a
# directory: a fresh one per child for "create", one kept across children for "reopen")
_CASES: dict[str, tuple[str, str]] = {
    "mmapkit": ("import mmapkit",
                "import mmapkit; mmapkit.KV({path} + '/s.kv').close()"),
    "lmdb": ("import lmdb", "import lmdb; lmdb.open({path}).close()"),
    "rocksdict": ("import rocksdict", "import rocksdict; rocksdict.Rdict({path}).close()"),
    "diskcache": ("import diskcache", "import diskcache; diskcache.Cache({path}).close()"),
}
_BARE = "python -c pass"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure what an installed package costs
    spec = importlib.util.find_spec("mmapkit")
    if spec is not None and spec.origin:  # the mmapkit this bench belongs to
        root = os.path.dirname(os.path.dirname(spec.origin))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _time(argv: list[str], env: dict[str, str], cwd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _modules(code: str, env: dict[str, str], cwd: str) -> int:
    probe = f"import sys\nn = len(sys.modules)\n{code}\nprint(len(sys.modules) - n)\n"
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=cwd, check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1])


def _available(name: str) -> str:
    if name == "mmapkit":
        return ""
    return "" if importlib.util.find_spec(name) is not None else "not installed (bench extra)"


def run(report: _harness.Report, args: argparse.Namespace) -> None:
    rounds = args.rounds or (5 if args.quick else 20)
    env = _env()
    impls = []
    for name in _CASES:
        if not _harness.wanted(args, name):
            continue
        why = _available(name)
        if why:
            report.skip(name, why)
        else:
            impls.append(name)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="mmapkit-bench-startup-") as tmp:
        n = 0

        def fresh() -> str:
            nonlocal n
            n += 1
            d = os.path.join(tmp, f"s{n}")
            os.mkdir(d)
            return repr(d)

        for name in impls:
            os.mkdir(os.path.join(tmp, f"kept-{name}"))

        def argv(code: str) -> list[str]:
            if code == "--help":
                return [py, "-m", "mmapkit", "--help"]
            return [py, "-c", code.format(path=fresh()) if "{path}" in code else code]

        # (case, implementation, the child's code)
        runs: list[tuple[str, str, str]] = [("interpreter", _BARE, "pass")]
        for name in impls:
            runs.append(("import", name, _CASES[name][0]))
            runs.append(("import + create a store", name, _CASES[name][1]))
            # the warm-up round creates it; the timed rounds open what exists
            runs.append(("import + reopen a store", name, _CASES[name][1].format(
                path=repr(os.path.join(tmp, f"kept-{name}")))))
        if "mmapkit" in impls:
            runs.append(("--help", "mmapkit", "--help"))
        samples: dict[tuple[str, str], list[float]] = {(c, i): [] for c, i, _ in runs}
        for _c, _i, code in runs:  # warm-up: writes the .pyc files, fills the page cache
            _time(argv(code), env, tmp)
        for _ in range(rounds):
            for c, i, code in runs:
                samples[(c, i)].append(_time(argv(code), env, tmp) * 1e3)
        bare = statistics.median(samples[("interpreter", _BARE)])
        report.add("interpreter start", _BARE, samples[("interpreter", _BARE)], "ms",
                   higher_is_better=False)
        for (case, impl), xs in samples.items():
            if impl == _BARE:
                continue
            report.add(case, impl, xs, "ms", higher_is_better=False)
        for (case, impl), xs in samples.items():
            if impl == _BARE:
                continue
            report.add(f"{case}, over bare python", impl, [x - bare for x in xs], "ms",
                       higher_is_better=False)
        for name in impls:
            imp, opened = _CASES[name]
            report.add("modules loaded by import", name, [_modules(imp, env, tmp)],
                       "modules", higher_is_better=False)
            report.add("modules loaded by import + create", name,
                       [_modules(opened.format(path=fresh()), env, tmp)], "modules",
                       higher_is_better=False)
            kept = repr(os.path.join(tmp, f"kept-{name}"))
            report.add("modules loaded by import + reopen", name,
                       [_modules(opened.format(path=kept), env, tmp)], "modules",
                       higher_is_better=False)


def _extend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=None,
                   help="fresh interpreters per case (default 20; 5 with --quick)")


def main(argv: list[str] | None = None) -> int:
    return _harness.main_for("startup", run, argv, extend=_extend)


if __name__ == "__main__":
    raise SystemExit(main())
