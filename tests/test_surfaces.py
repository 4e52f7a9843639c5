"""Pinned surfaces (trio-style): each public package's ``__all__`` is written down here, every
name in an ``__all__`` exists, and every name one mmapkit module imports from a sibling is
in that sibling's ``__all__`` -- so a private module's surface is what its siblings use, and
nothing is reached around it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import mmapkit

ROOT = Path(mmapkit.__file__).parent

PUBLIC = {
    "mmapkit.kv": {"CheckReport", "KV", "KVStatistics"},
    "mmapkit.log": {"Damage", "Handler", "LogCheck", "LogWarning", "Record", "Writer",
                    "WriterStatistics", "check", "generate_keypair", "read", "read_buffer"},
    "mmapkit.ipc": {"Channel", "ChannelStatistics", "JoinableQueue", "Queue", "SimpleQueue"},
    "mmapkit.journal": {"CheckReport", "Consumer", "Journal", "JournalServer",
                        "JournalStatistics", "ProtocolError", "Reader", "Record",
                        "RecoveryReport", "RemoteReader", "serve"},
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_public_packages_all_is_pinned(package: str) -> None:
    mod = importlib.import_module(package)
    assert set(mod.__all__) == PUBLIC[package]
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def _sibling_imports() -> list[tuple[str, str, str]]:
    """(importing module, imported module, name) for every relative ``from`` import."""
    out = []
    for name, path in _modules():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            out += [(name, target, a.name) for a in node.names]
    return out


# Known reaches around a surface (a private name of a sibling, not in its __all__): none
# are left, and none may come back.
KNOWN: set[tuple[str, str]] = set()


def test_every_name_a_sibling_imports_is_in_its_all() -> None:
    missing = []
    for importer, target, name in _sibling_imports():
        try:
            importlib.import_module(f"{target}.{name}")
            continue  # a submodule
        except ImportError:
            pass
        mod = importlib.import_module(target)
        if name not in getattr(mod, "__all__", ()) and (target, name) not in KNOWN:
            missing.append(f"{importer} imports {name} from {target}")
    assert missing == []


@pytest.mark.parametrize("name", [n for n, _ in _modules() if n != "mmapkit.__main__"])
def test_every_all_name_exists(name: str) -> None:
    try:
        mod = importlib.import_module(name)
    except ImportError as exc:  # an optional extra this machine lacks
        pytest.skip(f"{name}: {exc}")
    for attr in getattr(mod, "__all__", ()):
        assert hasattr(mod, attr), f"{name}.__all__ names {attr}, which it does not have"
