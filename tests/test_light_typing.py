"""mmapkit._light_typing: the KV's stand-ins for typing.NamedTuple, typing.Protocol and
contextlib.contextmanager behave as the real ones do where the KV relies on them."""

from __future__ import annotations

import contextlib
import pickle
import typing

import pytest
from conftest import run_py

from mmapkit import _light_typing
from mmapkit.kv import codec


def _declare(base: type, name: str) -> type:
    """The same class statement over either base (the KV's shapes: fields, a default, a
    property, a method, a docstring)."""

    class Pair(base):  # type: ignore[valid-type,misc]
        """A doc."""

        a: int
        b: str
        c: float = 1.5

        @property
        def twice(self) -> int:
            return self.a * 2

        def both(self) -> tuple[int, str]:
            return self.a, self.b

    Pair.__name__ = Pair.__qualname__ = name  # (a module-level name: pickle finds it)
    return Pair


Light = _declare(_light_typing.NamedTuple, "Light")
Real = _declare(typing.NamedTuple, "Real")  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [Light, Real])
def test_named_tuple_behaves_as_typings(cls):
    t = cls(3, "x")
    assert isinstance(t, tuple) and tuple(t) == (3, "x", 1.5)
    assert (t.a, t.b, t.c, t.twice, t.both()) == (3, "x", 1.5, 6, (3, "x"))
    assert t == (3, "x", 1.5) and t._replace(b="y").b == "y"
    assert t._asdict() == {"a": 3, "b": "x", "c": 1.5} and cls._fields == ("a", "b", "c")
    assert repr(t) == f"{cls.__name__}(a=3, b='x', c=1.5)"
    assert cls.__doc__ == "A doc." and cls.__module__ == __name__
    assert pickle.loads(pickle.dumps(t)) == t
    a, b, c = t
    assert (a, b, c) == (3, "x", 1.5)
    with pytest.raises(AttributeError):
        t.a = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        cls()


def test_named_tuple_refuses_a_field_without_default_after_one_with():
    with pytest.raises(TypeError, match="without a default"):
        class Bad(_light_typing.NamedTuple):
            a: int = 1
            b: int  # type: ignore[misc]


def test_kv_records_are_named_tuples():
    rec = codec.Record(8, 1, 0, b"body")
    assert tuple(rec) == (8, 1, 0, b"body") and rec.size == codec.record_size(4)
    assert rec._replace(offset=16).offset == 16


def test_contextmanager_is_contextlibs_at_first_use():
    seen = []

    @_light_typing.contextmanager
    def managed(x: int):
        """Managed doc."""
        seen.append(("in", x))
        try:
            yield x * 2
        finally:
            seen.append(("out", x))

    assert managed.__name__ == "managed" and managed.__doc__ == "Managed doc."
    assert managed.__wrapped__ is not None
    with managed(2) as got:
        assert got == 4
    with pytest.raises(KeyError), managed(3):
        raise KeyError(3)
    assert seen == [("in", 2), ("out", 2), ("in", 3), ("out", 3)]
    assert isinstance(managed(1), contextlib.AbstractContextManager)


def test_importing_light_typing_loads_neither_typing_nor_contextlib():
    res = run_py("""
        import sys
        import mmapkit._light_typing as lt

        class T(lt.NamedTuple):
            x: int

        @lt.contextmanager
        def cm():
            yield 1

        print(sorted(m for m in ("typing", "contextlib", "re", "enum") if m in sys.modules))
        with cm():
            pass
        print("contextlib" in sys.modules)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["[]", "True"]
