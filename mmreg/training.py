"""Epoch bookkeeping shared by the training loops: best weights, history, progress, summary.

Every ``mmreg train`` target keeps the weights of its best validation epoch, logs each
epoch, shows it on the progress bar and ends with the same summary fields; this is that
part, once.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(1, 1)
    >>> best = BestEpoch(net)
    >>> best.end_epoch({"epoch": 1.0, "val_error_mm": 3.0}, score=-3.0)
    True
    >>> best.end_epoch({"epoch": 2.0, "val_error_mm": 4.0}, score=-4.0)
    False
    >>> best.epoch, len(best.history)
    (1, 2)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from torch import nn

__all__ = ["BestEpoch"]

Record = dict[str, float]


class BestEpoch:
    """Keeps the best epoch's weights (a higher ``score`` is better; ties keep the first).

    Args:
        module: The network being trained (its state is copied to the CPU).
        log: Where each epoch's record is logged.
        bar: A tqdm bar to show the record on (``None``: none).
        on_epoch: Called with each record (e.g. for a caller's own logging).
        digits: Decimals on the progress bar.
        started: ``time.perf_counter()`` when the training began (default: now), for
            the summary's wall time.
        score: The score an epoch must beat (default: none; the first epoch is best).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        log: logging.Logger | None = None,
        bar: Any = None,
        on_epoch: Callable[[Record], None] | None = None,
        digits: int = 3,
        started: float | None = None,
        score: Any = None,
    ) -> None:
        self.module = module
        self.log = log
        self.bar = bar
        self.on_epoch = on_epoch
        self.digits = digits
        self.score: Any = score
        self.epoch = 0
        self.history: list[Record] = []
        self.started = time.perf_counter() if started is None else started
        self._state = self._copy()

    def _copy(self) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def end_epoch(self, record: Record, score: Any) -> bool:
        """Record one epoch; returns whether it is the best so far."""
        better = self.score is None or score > self.score
        if better:
            self.score, self.epoch, self._state = score, int(record["epoch"]), self._copy()
        self.history.append(record)
        if self.bar is not None:
            shown = {k: f"{v:.{self.digits}f}" for k, v in record.items() if k != "epoch"}
            self.bar.set_postfix(shown)
        if self.log is not None:
            self.log.info("epoch %d: %s", int(record["epoch"]), record)
        if self.on_epoch is not None:
            self.on_epoch(record)
        return better

    @property
    def state(self) -> dict[str, Any]:
        """The best epoch's weights (CPU copies)."""
        return self._state

    def restore(self) -> nn.Module:
        """The module with the best epoch's weights, on the CPU, in eval mode."""
        self.module.load_state_dict(self._state)
        return self.module.to("cpu").eval()

    def summary(self, *, device: str, settings: Any, **extra: Any) -> dict[str, Any]:
        """The fields every training summary has, plus ``extra``."""
        values = asdict(settings) if is_dataclass(settings) else dict(settings)
        return {
            **extra,
            "best_epoch": self.epoch,
            "history": self.history,
            "wall_time_s": round(time.perf_counter() - self.started, 1),
            "device": device,
            "settings": _plain(values),
        }


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """Tuples as lists (JSON-like, as the checkpoints store them)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
