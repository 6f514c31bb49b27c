"""``A+B`` chains: each method starts from the previous method's full transform."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform
from mmreg.methods.base import Method, RegistrationResult, check_inputs
from mmreg.methods.registry import CHAIN_SEPARATOR, get_method

__all__ = ["ChainMethod", "run_chain", "step_extras"]


def step_extras(extras: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A result's extras, then each chain step's (a single method: just its own).

    Example:
        >>> step_extras({"a": 1, "steps": [{"method": "x", "extras": {"b": 2}}]})
        [{'a': 1, 'steps': [{'method': 'x', 'extras': {'b': 2}}]}, {'b': 2}]
    """
    return [extras, *(step.get("extras", {}) for step in extras.get("steps", []))]


class ChainMethod:
    """Methods run in order; step ``k`` gets step ``k-1``'s transform as ``initial``.

    The chain's transform is the last step's (which includes everything before it,
    since every method returns the full fixed->moving map); its runtime is the sum.
    ``extras`` are the last step's extras plus ``steps``: one entry per step with its
    ``method``, ``runtime_s`` and ``extras``.
    """

    def __init__(self, steps: Sequence[Method]) -> None:
        if not steps:
            raise ValueError("a chain needs at least one method")
        self.steps = tuple(steps)
        self.name = CHAIN_SEPARATOR.join(m.name for m in self.steps)
        self.deformable = any(m.deformable for m in self.steps)

    def register(
        self,
        fixed: Image,
        moving: Image,
        *,
        initial: Transform | None = None,
        seed: int = 0,
        device: str = "cpu",
        threads: int = 1,
    ) -> RegistrationResult:
        """Run every step; see :meth:`mmreg.methods.base.Method.register`."""
        check_inputs(fixed, moving, initial)
        current = initial
        total = 0.0
        record: list[dict[str, Any]] = []
        label_maps: dict[str, Any] = {}
        result: RegistrationResult | None = None
        for method in self.steps:
            result = method.register(
                fixed, moving, initial=current, seed=seed, device=device, threads=threads
            )
            current = result.transform
            total += result.runtime_s
            label_maps.update(result.label_maps)
            record.append(
                {"method": method.name, "runtime_s": result.runtime_s, "extras": result.extras}
            )
        assert result is not None
        extras = {**result.extras, "steps": record}
        return RegistrationResult(result.transform, total, extras, label_maps)

    def __repr__(self) -> str:
        return f"<chain {self.name}>"


def run_chain(
    spec: str,
    fixed: Image,
    moving: Image,
    *,
    initial: Transform | None = None,
    seed: int = 0,
    device: str = "cpu",
    threads: int = 1,
    models: Mapping[str, str] | None = None,
) -> RegistrationResult:
    """Register with a method name or an ``A+B`` chain (``models``: see ``get_method``).

    Raises:
        UsageError: For an unknown method name.
        RegistrationError: When a step fails (the message names the method).
    """
    return get_method(spec, models=models).register(
        fixed, moving, initial=initial, seed=seed, device=device, threads=threads
    )
