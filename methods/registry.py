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
``--methods`` is a comma-separated list of specs. A step may carry parameters,
``name:key=value[:key=value]`` (e.g. ``keymorph-tps:lambda=0.1``), handed to its factory
as strings, so one model gives several rows; :func:`settings_from_params` turns them into
a settings dataclass with one-line errors (``ants-ai:search=30``).

Learned methods belong to a *model family* (``keymorph``): their factory is called with
``model=`` the weights file chosen by ``--model family=PATH`` (``None``: shipped weights).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from mmreg.errors import UsageError
from mmreg.methods.base import Method

__all__ = [
    "CHAIN_SEPARATOR",
    "available_methods",
    "get_method",
    "join_step",
    "model_families",
    "model_family",
    "parse_methods",
    "register_factory",
    "register_lazy",
    "register_method",
    "settings_from_params",
    "split_chain",
    "split_step",
]

CHAIN_SEPARATOR = "+"
LIST_SEPARATOR = ","
PARAM_SEPARATOR = ":"

_FACTORIES: dict[str, Callable[..., Method]] = {}
_FAMILIES: dict[str, str] = {}
_LAZY: dict[str, str] = {}
_PARAM = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)=([A-Za-z0-9_.+-]+)$")

M = TypeVar("M", bound="type[Method]")
S = TypeVar("S")

#: Spellings of boolean parameter values (``name:key=value``).
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def register_factory(
    name: str,
    factory: Callable[..., Method],
    *,
    replace: bool = False,
    model_family: str | None = None,
) -> None:
    """Register ``factory`` under the CLI ``name``.

    The factory is called with ``params=`` (a ``dict[str, str]``) only when the spec
    has parameters, and, for a ``model_family``, always with ``model=`` (a path or
    ``None``).

    Raises:
        ValueError: For an invalid name, or a name already taken (unless ``replace``).
    """
    _check_name(name)
    if name in _FACTORIES and not replace and _FACTORIES[name] is not factory:
        raise ValueError(f"method {name!r} is already registered")
    _FACTORIES[name] = factory
    if model_family:
        _FAMILIES[name] = model_family
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
    if not name or name != name.strip() or any(c in name for c in ",+: \t="):
        raise ValueError(f"invalid method name {name!r}")


def available_methods() -> list[str]:
    """Names of all registered (and announced) methods, sorted."""
    return sorted({*_FACTORIES, *_LAZY})


def _unknown(name: str) -> UsageError:
    return UsageError(
        f"unknown method {name!r}; available methods: {', '.join(available_methods())} "
        f"(chain with '{CHAIN_SEPARATOR}', e.g. sitk-rigid{CHAIN_SEPARATOR}ants-syn)"
    )


def split_step(step: str) -> tuple[str, dict[str, str]]:
    """``"keymorph-tps:lambda=0.1"`` -> ``("keymorph-tps", {"lambda": "0.1"})``.

    Raises:
        UsageError: For a malformed parameter.
    """
    name, *items = [part.strip() for part in step.split(PARAM_SEPARATOR)]
    params: dict[str, str] = {}
    for item in items:
        match = _PARAM.match(item)
        if not match:
            raise UsageError(
                f"invalid method parameter {item!r} in {step!r}; write name:key=value, "
                "e.g. keymorph-tps:lambda=0.1"
            )
        params[match.group(1)] = match.group(2)
    return name, params


def join_step(name: str, params: Mapping[str, str]) -> str:
    """Inverse of :func:`split_step` (parameters in the given order)."""
    return PARAM_SEPARATOR.join([name, *(f"{k}={v}" for k, v in params.items())])


def split_chain(spec: str) -> list[str]:
    """``"a+b:k=v"`` -> ``["a", "b:k=v"]`` (stripped, each name checked).

    Raises:
        UsageError: For an empty step, an unknown name or a malformed parameter.
    """
    steps = [s.strip() for s in str(spec).split(CHAIN_SEPARATOR)]
    if not all(steps):
        raise UsageError(f"empty method name in {spec!r}")
    known = available_methods()
    out = []
    for step in steps:
        name, params = split_step(step)
        if name not in known:
            raise _unknown(name)
        out.append(join_step(name, params))
    return out


def model_family(name: str) -> str | None:
    """The model family of a method name (``keymorph-affine`` -> ``keymorph``), if learned."""
    name = split_step(name)[0]
    _load(name)
    return _FAMILIES.get(name)


def model_families(specs: Iterable[str]) -> list[str]:
    """The model families that a list of method specs needs, in first-use order."""
    out: list[str] = []
    for spec in specs:
        for step in split_chain(spec):
            family = model_family(step)
            if family and family not in out:
                out.append(family)
    return out


def _load(name: str) -> None:
    if name not in _FACTORIES and name in _LAZY:
        module = _LAZY[name]
        importlib.import_module(module)
        if name not in _FACTORIES:
            raise RuntimeError(f"module {module} did not register method {name!r}")
    if name not in _FACTORIES:
        raise _unknown(name)


def _single(step: str, models: Mapping[str, str]) -> Method:
    name, params = split_step(step)
    _load(name)
    kwargs: dict[str, object] = {}
    if params:
        kwargs["params"] = params
    family = _FAMILIES.get(name)
    if family:
        kwargs["model"] = models.get(family)
    factory = _FACTORIES[name]
    if params and "params" not in inspect.signature(factory).parameters:
        raise UsageError(f"method {name!r} takes no parameters (got {step!r})")
    return factory(**kwargs)


def get_method(spec: str, *, models: Mapping[str, str] | None = None) -> Method:
    """The method object for a name, or a chain object for ``A+B``.

    Args:
        spec: A method spec (``name``, ``name:key=value`` or an ``A+B`` chain).
        models: Weights per model family (``{"keymorph": "/path/model.pt"}``); families
            not given use their shipped weights.

    Raises:
        UsageError: For an unknown name (the message lists the available ones).
    """
    models = models or {}
    steps = split_chain(spec)
    if len(steps) == 1:
        return _single(steps[0], models)
    from mmreg.methods.chain import ChainMethod

    return ChainMethod([_single(s, models) for s in steps])


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


def settings_from_params(name: str, defaults: S, params: Mapping[str, str] | None) -> S:
    """``defaults`` (a dataclass instance) with a spec's ``key=value`` strings applied.

    Each value is converted to its field's type (``bool``: ``1/0``, ``true/false``,
    ``yes/no``, ``on/off``); the dataclass's own checks (``ValueError`` in
    ``__post_init__``) then run. Shared so that every parameterised method answers
    bad parameters the same way: one line starting with the method name.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class Opts:
        ...     step: float = 20.0
        >>> settings_from_params("m", Opts(), {"step": "30"})
        Opts(step=30.0)

    Raises:
        UsageError: For an unknown key, a value of the wrong type or a rejected value.
    """
    if not dataclasses.is_dataclass(defaults) or isinstance(defaults, type):
        raise TypeError("defaults must be a dataclass instance")
    hints = typing.get_type_hints(type(defaults))
    known = sorted(f.name for f in dataclasses.fields(defaults))
    values: dict[str, object] = {}
    for key, text in (params or {}).items():
        if key not in known:
            raise UsageError(f"{name}: unknown parameter {key!r}; known: {', '.join(known)}")
        kind = hints[key]
        if kind is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise UsageError(f"{name}: {key} must be 0 or 1, got {text!r}")
            values[key] = text.lower() in _TRUE
            continue
        try:
            number = kind(text)
        except (TypeError, ValueError):
            raise UsageError(f"{name}: {key}={text!r} is not a valid {kind.__name__}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise UsageError(f"{name}: {key} must be finite, got {text!r}")
        values[key] = number
    try:
        return dataclasses.replace(defaults, **values)
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}") from None
