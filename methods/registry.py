"""Method names -> method objects, and the ``--methods`` syntax.

Methods register themselves when their module is imported::

    @register_method
    class MyMethod(BaseMethod):
        name = "my-method"
        ...

Parameterised families register one factory per name (:func:`register_factory`).
Methods with heavy imports (torch) can be announced with :func:`register_lazy`, so
that listing names does not import them; the named module is imported on first use
and must register the name itself.

A method spec is a name or a chain ``A+B`` (A's transform initialises B), and
``--methods`` is a comma-separated list of specs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TypeVar

from mmreg.errors import UsageError
from mmreg.methods.base import Method

__all__ = [
    "CHAIN_SEPARATOR",
    "available_methods",
    "get_method",
    "parse_methods",
    "register_factory",
    "register_lazy",
    "register_method",
    "split_chain",
]

CHAIN_SEPARATOR = "+"
LIST_SEPARATOR = ","

_FACTORIES: dict[str, Callable[[], Method]] = {}
_LAZY: dict[str, str] = {}

M = TypeVar("M", bound=type)


def register_factory(name: str, factory: Callable[[], Method], *, replace: bool = False) -> None:
    """Register ``factory`` (called with no arguments) under the CLI ``name``.

    Raises:
        ValueError: For an invalid name, or a name already taken (unless ``replace``).
    """
    _check_name(name)
    if name in _FACTORIES and not replace and _FACTORIES[name] is not factory:
        raise ValueError(f"method {name!r} is already registered")
    _FACTORIES[name] = factory
    _LAZY.pop(name, None)


def register_method(cls: M) -> M:
    """Class decorator: register a method class (no-argument constructor) by its ``name``."""
    register_factory(cls.name, cls, replace=True)
    return cls


def register_lazy(name: str, module: str) -> None:
    """Announce ``name``, implemented in ``module`` (imported on first :func:`get_method`)."""
    _check_name(name)
    if name not in _FACTORIES:
        _LAZY[name] = module


def _check_name(name: str) -> None:
    if not name or name != name.strip() or any(c in name for c in ",+ \t"):
        raise ValueError(f"invalid method name {name!r}")


def available_methods() -> list[str]:
    """Names of all registered (and announced) methods, sorted."""
    return sorted({*_FACTORIES, *_LAZY})


def _unknown(name: str) -> UsageError:
    return UsageError(
        f"unknown method {name!r}; available methods: {', '.join(available_methods())} "
        f"(chain with '{CHAIN_SEPARATOR}', e.g. sitk-rigid{CHAIN_SEPARATOR}ants-syn)"
    )


def split_chain(spec: str) -> list[str]:
    """``"a+b"`` -> ``["a", "b"]`` (stripped, each name checked).

    Raises:
        UsageError: For an empty step or an unknown name.
    """
    steps = [s.strip() for s in str(spec).split(CHAIN_SEPARATOR)]
    if not all(steps):
        raise UsageError(f"empty method name in {spec!r}")
    known = available_methods()
    for step in steps:
        if step not in known:
            raise _unknown(step)
    return steps


def _single(name: str) -> Method:
    if name not in _FACTORIES and name in _LAZY:
        module = _LAZY[name]
        importlib.import_module(module)
        if name not in _FACTORIES:
            raise RuntimeError(f"module {module} did not register method {name!r}")
    if name not in _FACTORIES:
        raise _unknown(name)
    return _FACTORIES[name]()


def get_method(spec: str) -> Method:
    """The method object for a name, or a chain object for ``A+B``.

    Raises:
        UsageError: For an unknown name (the message lists the available ones).
    """
    steps = split_chain(spec)
    if len(steps) == 1:
        return _single(steps[0])
    from mmreg.methods.chain import ChainMethod

    return ChainMethod([_single(s) for s in steps])


def parse_methods(specs: str | Iterable[str]) -> list[str]:
    """Parse ``--methods`` values into normalised specs, each validated.

    ``"identity, ants-affine,keymorph-affine + ants-syn"`` ->
    ``["identity", "ants-affine", "keymorph-affine+ants-syn"]``. Several strings
    (the option given more than once) are concatenated; duplicates are dropped,
    order is kept.

    Raises:
        UsageError: One line, for an unknown name, an empty chain step or no method.
    """
    if isinstance(specs, str):
        specs = [specs]
    out: list[str] = []
    for text in specs:
        for spec in str(text).split(LIST_SEPARATOR):
            if not spec.strip():
                continue
            name = CHAIN_SEPARATOR.join(split_chain(spec))
            if name not in out:
                out.append(name)
    if not out:
        raise UsageError(f"no method given; available methods: {', '.join(available_methods())}")
    return out
