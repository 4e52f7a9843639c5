"""Start-up cost (issue 16): what ``import mmapkit``, opening a KV and ``mmapkit --help``
load, checked in fresh interpreters.  Module sets and counts, not timings: the timings are
in ``mmapkit bench startup`` (bench/startup.py) and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
from pathlib import Path

import pytest
from conftest import run_py

import mmapkit
from mmapkit.commands import COMMANDS

# Never loaded by a bare ``import mmapkit``: each costs milliseconds (asyncio and ssl tens)
# and none is needed before a component is used.
HEAVY = ["asyncio", "ssl", "subprocess", "logging", "json", "ctypes", "pickle", "socket",
         "selectors", "tempfile", "shutil", "filecmp", "secrets", "random", "platform",
         "dataclasses", "inspect", "typing", "threading", "pathlib", "argparse", "queue",
         "mmap", "zlib", "struct", "datetime", "heapq"]
# Opening a KV needs some of those (threading, struct, zlib...), never these (its report
# dataclasses load with statistics() or check(): dataclasses pulls in inspect and ast;
# typing, with re, enum and contextlib, was 40% of the instructions an open took).
NOT_FOR_KV = ["asyncio", "ssl", "subprocess", "logging", "json", "pickle", "socket",
              "selectors", "tempfile", "shutil", "filecmp", "secrets", "platform", "pathlib",
              "argparse", "queue", "datetime", "heapq", "hashlib", "dataclasses", "inspect",
              "typing", "re", "enum", "contextlib"]

def _loaded(code: str) -> tuple[set[str], int]:
    """Modules that ``code`` loads in a fresh interpreter beyond a bare one's, and how many."""
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"{code}\n"
        "new = sorted(set(sys.modules) - before)\n"
        "print(repr(new))\n"
    )
    res = run_py(probe)
    assert res.returncode == 0, res.stderr
    new = ast.literal_eval(res.stdout.strip().splitlines()[-1])
    return set(new), len(new)


def _tops(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_bare_import_loads_no_heavy_module():
    new, _ = _loaded("import mmapkit")
    heavy = sorted(_tops(new) & set(HEAVY))
    assert heavy == [], f"import mmapkit loads {heavy}"
    ours = sorted(m for m in new if m.startswith("mmapkit."))
    assert ours == ["mmapkit.errors"], ours


def test_bare_import_loads_no_third_party_package():
    res = run_py("""
        import sys
        before = set(sys.modules)
        import mmapkit
        third = sorted({m.split(".")[0] for m in set(sys.modules) - before}
                       - set(sys.stdlib_module_names) - {"mmapkit"})
        print(third)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_bare_import_module_count_is_bounded():
    # Issue 16's target is <= 60 beyond a bare interpreter (it was 170); today it is a
    # handful.  A bound with margin: it catches an eager import creeping back, not noise.
    _, count = _loaded("import mmapkit")
    assert count <= 15, count


def test_kv_open_loads_only_what_a_kv_needs(tmp_path):
    path = tmp_path / "s.kv"
    new, count = _loaded(f"import mmapkit; mmapkit.KV({str(path)!r}).close()")
    bad = sorted(_tops(new) & set(NOT_FOR_KV))
    assert bad == [], f"opening a KV loads {bad}"
    ours = {m for m in new if m.startswith("mmapkit.")}
    for component in ("mmapkit.ipc", "mmapkit.log", "mmapkit.journal", "mmapkit.transfer",
                      "mmapkit.inspect", "mmapkit.cli", "mmapkit.commands"):
        assert not {m for m in ours if m == component or m.startswith(component + ".")}, \
            (component, sorted(ours))
    assert count <= 70, count  # 53 at the last change


@pytest.mark.parametrize("module, absent", [
    ("mmapkit.ipc", ["asyncio", "pickle", "tempfile", "socket", "logging", "json"]),
    ("mmapkit.transfer", ["asyncio", "socket", "shutil", "secrets", "logging", "json"]),
    ("mmapkit.region", ["asyncio", "tempfile", "logging", "json", "dataclasses"]),
    ("mmapkit.lock", ["asyncio", "tempfile", "logging", "json"]),
    ("mmapkit.wait", ["asyncio", "tempfile", "logging", "json"]),
])
def test_components_import_their_heavy_dependencies_on_use(module, absent):
    new, _ = _loaded(f"import {module}")
    assert sorted(_tops(new) & set(absent)) == []


def test_log_handler_is_a_logging_handler_and_only_log_loads_logging():
    res = run_py("""
        import sys, logging
        import mmapkit
        assert issubclass(mmapkit.log.Handler, logging.Handler)
        print("ok")
    """)
    assert res.returncode == 0, res.stderr
    new, _ = _loaded("import mmapkit.log")
    assert "logging" in new  # the Handler needs it; a bare import mmapkit must not


def test_every_public_name_resolves_in_a_fresh_interpreter():
    res = run_py("""
        import json, sys
        import mmapkit
        out = {}
        for name in mmapkit.__all__:
            obj = getattr(mmapkit, name)
            out[name] = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
        ns = {}
        exec("from mmapkit import *", ns)
        missing = sorted(set(mmapkit.__all__) - set(ns))
        print(json.dumps({"modules": out, "star_missing": missing,
                          "dir_missing": sorted(set(mmapkit.__all__) - set(dir(mmapkit)))}))
    """)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["star_missing"] == [] and got["dir_missing"] == []
    assert set(got["modules"]) == set(mmapkit.__all__)
    for name, where in got["modules"].items():
        assert name == "__version__" or where.startswith("mmapkit"), (name, where)


def test_from_import_and_attribute_give_the_same_objects():
    from mmapkit import KV, Channel, Journal, copy, log
    from mmapkit.ipc import Channel as Channel2
    from mmapkit.journal import Journal as Journal2
    from mmapkit.kv import KV as KV2
    from mmapkit.transfer import copy as copy2

    assert (KV, Channel, Journal, copy) == (KV2, Channel2, Journal2, copy2)
    assert log is importlib.import_module("mmapkit.log")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mmapkit.nope  # noqa: B018
    assert not hasattr(mmapkit, "TYPE_CHECKING") or "TYPE_CHECKING" not in dir(mmapkit)


def test_subpackages_are_still_attributes_of_the_package():
    # ``import mmapkit`` used to import them all; code that reached them as attributes
    # must keep working in a fresh interpreter.
    res = run_py("""
        import mmapkit
        print(mmapkit.kv.KV.__name__, mmapkit.ipc.channel.__name__, mmapkit.journal.Journal,
              mmapkit.log.Handler.__name__, mmapkit.inspect.residency.__name__)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:2] == ["KV", "mmapkit.ipc.channel"]


def test_lazy_table_and_type_checking_imports_agree():
    """Type checkers read the TYPE_CHECKING block, the interpreter _LAZY: one name, one
    place, in both, and between them (with the errors) every name of __all__."""
    source = Path(mmapkit.__file__).read_text()
    tree = ast.parse(source)
    typed: dict[str, str] = {}
    eager: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, (ast.Import, ast.ImportFrom))
                if isinstance(imp, ast.ImportFrom) and imp.level == 1:
                    for alias in imp.names:
                        typed[alias.asname or alias.name] = "." + (imp.module or "")
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            eager |= {a.asname or a.name for a in node.names}
    lazy = {name: where or "." for name, where in mmapkit._LAZY.items()}
    assert typed == lazy
    assert set(lazy) | eager | {"__version__"} == set(mmapkit.__all__)
    assert not set(lazy) & eager


def test_help_imports_no_command_module_and_no_component():
    new, _ = _loaded("""
from mmapkit.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
""")
    ours = sorted(m for m in new if m.startswith("mmapkit"))
    assert ours == ["mmapkit", "mmapkit.cli", "mmapkit.commands", "mmapkit.errors"], ours
    # argparse itself loads shutil, re, gettext...: only what no help text needs here
    assert sorted(_tops(new) & set([*NOT_FOR_KV, "ctypes", "dataclasses", "inspect"])
                  - {"argparse", "shutil", "re", "enum"}) == []


def test_a_subcommand_imports_only_its_own_module(tmp_path):
    path = tmp_path / "s.kv"
    new, _ = _loaded(f"""
from mmapkit.cli import main
import mmapkit
mmapkit.KV({str(path)!r}).close()
assert main(["kv", {str(path)!r}, "list"]) == 0
""")
    commands = sorted(m for m in new if m.startswith("mmapkit.commands."))
    assert commands == ["mmapkit.commands._out", "mmapkit.commands.kv"], commands
    assert not any(m.startswith(("mmapkit.ipc", "mmapkit.log", "mmapkit.journal"))
                   for m in new)


def test_command_table_matches_what_the_modules_register():
    """``mmapkit --help`` shows the COMMANDS table; each module's register() must add
    exactly the commands the table gives it, with the same help."""
    modules = sorted({module for module, _ in COMMANDS.values()})
    for module_name in modules:
        parser = argparse.ArgumentParser(prog="mmapkit")
        sub = parser.add_subparsers(dest="command")
        importlib.import_module(f"mmapkit.commands.{module_name}").register(sub)
        registered = {a.dest: a.help for a in sub._choices_actions}
        expected = {name: help_ for name, (mod, help_) in COMMANDS.items() if mod == module_name}
        assert registered == expected, module_name
    package = Path(importlib.import_module("mmapkit.commands").__file__).parent
    on_disk = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")}
    assert on_disk == set(modules)
