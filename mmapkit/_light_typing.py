"""``NamedTuple``, ``Protocol`` and ``contextmanager`` for the KV's import path, cheaply.

``typing`` takes ``re``, ``enum``, ``functools`` and ``contextlib`` with it: with them it
was 40% of the instructions ``import mmapkit; mmapkit.KV(path)`` ran beyond a bare
interpreter (issue 16; 109M -> 61M under callgrind once they were gone).  Type checkers see
``typing.NamedTuple`` (the importing module guards the name with ``TYPE_CHECKING``); at
run time this base turns the same class statement into the same
``collections.namedtuple`` class ``typing.NamedTuple`` makes: the annotated names become
the fields, in order, with their defaults; methods, properties and the docstring are
kept.  Only plain ``NamedTuple`` subclasses of one level are supported, which is all the
KV declares.  ``Protocol`` is a plain base class at run time: a protocol class documents
what a caller passes and is checked statically, never with ``isinstance``.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# (through a plain callable: type checkers special-case literal namedtuple() calls)
_tuple_type: Callable[..., type] = namedtuple

__all__ = ["NamedTuple", "Protocol", "contextmanager"]

# what the class body defines for Python itself, not for the tuple
_NOT_COPIED = frozenset({"__module__", "__qualname__", "__annotations__", "__dict__",
                         "__weakref__", "__slots__"})


class _Maker(type):
    def __new__(mcls, name: str, bases: tuple[type, ...],
                ns: dict[str, object]) -> type:
        if not bases:  # NamedTuple itself
            return super().__new__(mcls, name, bases, ns)
        annotations = ns.get("__annotations__", {})
        assert isinstance(annotations, dict)
        fields = list(annotations)
        defaults = [ns[f] for f in fields if f in ns]
        if defaults and any(f not in ns for f in fields[len(fields) - len(defaults):]):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        cls = _tuple_type(name, fields, defaults=defaults or None,
                          module=str(ns.get("__module__", __name__)))
        cls.__qualname__ = str(ns.get("__qualname__", name))
        for key, value in ns.items():
            if key not in _NOT_COPIED and key not in annotations:
                setattr(cls, key, value)
        return cls


class NamedTuple(metaclass=_Maker):
    """Subclass it as you would ``typing.NamedTuple``."""


class Protocol:
    """Subclass it as you would ``typing.Protocol`` (no run-time checks)."""

    __slots__ = ()


def contextmanager(func: Any) -> Any:
    """``contextlib.contextmanager``, with ``contextlib`` imported at the first call (it
    imports ``functools`` and ``collections`` work a KV open does not otherwise need).
    Type checkers see ``contextlib.contextmanager`` (the importing module guards the name
    with ``TYPE_CHECKING``)."""
    made: list[Any] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not made:
            import contextlib

            made.append(contextlib.contextmanager(func))
        return made[0](*args, **kwargs)

    call.__name__, call.__qualname__, call.__doc__ = func.__name__, func.__qualname__, func.__doc__
    call.__module__, call.__wrapped__ = func.__module__, func  # type: ignore[attr-defined]
    return call
