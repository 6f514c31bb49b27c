"""The training engine: split, seeding, the step loop with validation, best weights, resume.

Every ``mmreg train`` target keeps the weights of its best validation, logs progress,
shows it on the progress bar and ends with the same summary fields; this is that part,
once:

- :func:`split_items`: the train/validation split rule (sorted ids, seeded permutation);
- :func:`seed_everything`: one seeding protocol (:data:`SEED_PROTOCOL`, recorded in the
  checkpoint metadata by :meth:`BestEpoch.summary` callers);
- :func:`fit`: a step-based loop calling the target's ``train_step(step)`` and
  ``validate()``, keeping the best weights (:class:`BestEpoch`), with a tqdm bar or
  plain log lines, and a resumable state file (:func:`state_file`) written atomically at
  each validation;
- :func:`fit_epochs`: :func:`fit` in epochs (a new random order of the training items
  each epoch, validation after each);
- :class:`BestEpoch`: the best weights, the history and the summary.

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

    A step-based fit (the score is higher-is-better):

    >>> gen = seed_everything(0)
    >>> net = torch.nn.Linear(1, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> def step(i):
    ...     x = torch.randn(8, 1, generator=gen)
    ...     loss = (net(x) - 2 * x).pow(2).mean()
    ...     opt.zero_grad(); loss.backward(); opt.step()
    ...     return {"loss": float(loss.detach())}
    >>> def validate():
    ...     return {"score": -float((net.weight - 2).abs())}
    >>> best = fit(net, opt, step, validate, steps=40, validate_every=20, generator=gen)
    >>> best.epoch, round(float(net.weight.detach()), 1)
    (40, 2.0)
"""

from __future__ import annotations

import hashlib
import io
import logging
import platform
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from mmreg.atomic import atomic_path

__all__ = [
    "SEED_PROTOCOL",
    "BestEpoch",
    "digest",
    "epoch_steps",
    "fit",
    "fit_and_save",
    "fit_epochs",
    "seed_everything",
    "split_items",
    "state_file",
]

LOG = logging.getLogger("mmreg.train")

#: How :func:`seed_everything` seeds (stored in checkpoint metadata with the seed).
SEED_PROTOCOL = (
    "mmreg-seed-1: random.seed(s), numpy.random.seed(s), torch.manual_seed(s) (all devices), "
    "cudnn deterministic; sampling from torch.Generator().manual_seed(s)"
)

Record = dict[str, float]

#: Items :func:`split_items` splits: ids, or positions in a list.
Item = TypeVar("Item", str, int)


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
        values = (
            asdict(settings)
            if is_dataclass(settings) and not isinstance(settings, type)
            else dict(settings)
        )
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


# --- split and seeding ---------------------------------------------------------------------------


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator for sampling.

    cuDNN is made deterministic (cheap); see :data:`SEED_PROTOCOL`.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def split_items(
    ids: Iterable[Item], val_fraction: float, seed: int, *, min_each: int = 1
) -> tuple[list[Item], list[Item]]:
    """Deterministic train/validation split of ``ids`` (each list sorted).

    The ids (names, or list positions) are sorted, permuted with
    ``numpy.random.default_rng(seed)`` and the first ``round(n * val_fraction)`` go to
    validation, at least ``min_each`` and at most ``n - min_each`` when
    ``val_fraction > 0``; with fewer than ``2 * min_each`` ids all are for training.
    ``min_each=2`` suits contrastive losses, whose negatives come from the same side.

    Example:
        >>> split_items(["c", "a", "b", "d"], 0.25, seed=0)
        (['a', 'b', 'd'], ['c'])
        >>> split_items(range(4), 0.25, seed=0, min_each=2)
        ([1, 3], [0, 2])
        >>> split_items(range(3), 0.5, seed=0, min_each=2)
        ([0, 1, 2], [])
    """
    items = sorted(set(ids))
    n, least = len(items), max(1, int(min_each))
    if n < 2 * least or val_fraction <= 0:
        return items, []
    n_val = min(max(least, round(n * float(val_fraction))), n - least)
    order = np.random.default_rng(int(seed)).permutation(n)
    val = sorted(items[i] for i in order[:n_val])
    train = sorted(items[i] for i in order[n_val:])
    return train, val


# --- the loop ------------------------------------------------------------------------------------


def _rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def _set_rng_state(state: Mapping[str, Any], generator: torch.Generator | None) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def state_file(out: str | Path) -> Path:
    """Where the resumable training state of the checkpoint ``out`` is kept: next to it.

    Example:
        >>> state_file("models/dns.pt").name
        'dns.pt.state'
    """
    out = Path(out)
    return out.with_name(out.name + ".state")


def digest(*arrays: torch.Tensor | np.ndarray | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of arrays' shapes, types and values (a state dict's too), for a fingerprint
    of in-memory training data or weights that have no file name.

    Example:
        >>> digest(np.zeros(3)) == digest(torch.zeros(3, dtype=torch.float64))
        True
        >>> digest(np.zeros(3)) == digest(np.zeros(4))
        False
    """
    sha = hashlib.sha256()

    def add(value: Any) -> None:
        if isinstance(value, Mapping):
            for key in sorted(value):
                sha.update(str(key).encode())
                add(value[key])
            return
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        array = np.ascontiguousarray(value)
        sha.update(f"{array.dtype.str}{array.shape}".encode())
        sha.update(array.tobytes())

    for value in arrays:
        add(value)
    return sha.hexdigest()


def _shown(score: Any) -> str:
    """A score for a log line (a number, or a tuple of numbers)."""
    if isinstance(score, tuple):
        return "(" + ", ".join(f"{v:.4f}" for v in score) + ")"
    return f"{score:.4f}"


def _duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def fit(
    module: nn.Module,
    optimiser: torch.optim.Optimizer,
    train_step: Callable[[int], Mapping[str, float]],
    validate: Callable[[], Mapping[str, float]],
    *,
    steps: int,
    validate_every: int,
    log_every: int = 50,
    score: str | Callable[[Record], Any] = "score",
    progress: bool = False,
    state_path: str | Path | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    scheduler: Any = None,
    log: logging.Logger = LOG,
    desc: str = "train",
    time_limit_s: float | None = None,
    steps_per_epoch: int = 1,
    on_epoch: Callable[[Record], None] | None = None,
) -> BestEpoch:
    """Train for ``steps`` steps, validating every ``validate_every`` and at the end.

    Args:
        module: The network (put in train mode for steps, eval mode for validation).
        optimiser: Its optimiser (saved in the state file).
        train_step: ``train_step(step)`` (1-based) does one update and returns numbers to
            average and log (e.g. ``{"loss": ...}``).
        validate: Returns the validation numbers, among them ``score`` (higher is
            better); run under ``torch.no_grad()``.
        steps: Total number of steps (also when resuming).
        validate_every: Steps between validations.
        log_every: Steps between plain log lines (when ``progress`` is off).
        score: The key of the validation record to maximise, or a function of the
            whole record (``train_*`` means and validation numbers) giving a comparable
            value (e.g. a tuple: the first entry decides, the next breaks ties).
        progress: Show a tqdm bar instead of the log lines.
        state_path: A resumable state (weights, optimiser, scheduler, step, best so far,
            RNG states) is written there atomically at each validation; a run starts
            from it when it exists and its ``fingerprint`` matches.
        fingerprint: Plain values identifying the run (settings, data); a state file
            with another fingerprint is ignored (with a warning).
        generator: The caller's sampling generator (its state is saved and restored).
        scheduler: A learning-rate scheduler stepped after every step (optional).
        log: Where lines go.
        desc: The bar's label.
        time_limit_s: Stop (after a last validation) once this many seconds of this
            call have passed, even before ``steps`` (``None``: no limit).
        steps_per_epoch: The records' ``epoch`` is ``step / steps_per_epoch`` (1: the
            step; see :func:`fit_epochs`).
        on_epoch: Called with each validation's record (e.g. for a caller's own logging).

    Returns:
        The :class:`BestEpoch` (``epoch`` is the epoch, by default the step, of the best
        validation; the module still holds the last weights, use ``best.restore()``).
    """
    from tqdm.auto import tqdm

    steps, validate_every = int(steps), max(1, int(validate_every))
    print_every, per_epoch = max(1, int(log_every)), max(1, int(steps_per_epoch))
    unit = "step" if per_epoch == 1 else "epoch"
    fingerprint = dict(fingerprint or {})
    best = BestEpoch(module, log=log if not progress else None, on_epoch=on_epoch)
    start = 0
    path = Path(state_path) if state_path is not None else None
    if path is not None and path.is_file():
        start = _resume(path, module, optimiser, scheduler, best, generator, fingerprint, log)
    began = time.perf_counter()
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress, dynamic_ncols=True)
    best.bar = bar if progress else None
    sums: dict[str, float] = {}
    count = 0
    window_start, window_steps = time.perf_counter(), 0
    try:
        for step in range(start + 1, steps + 1):
            module.train()
            record = train_step(step)
            if scheduler is not None:
                scheduler.step()
            for key, value in record.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
            window_steps += 1
            bar.update(1)
            if progress:
                bar.set_postfix({k: f"{v:.3f}" for k, v in record.items()}, refresh=False)
            elif step % print_every == 0 or step == start + 1:
                per_step = (time.perf_counter() - window_start) / window_steps
                shown = " ".join(f"{k} {v:.4f}" for k, v in record.items())
                log.info(
                    "%s step %d/%d %s | %.2f s/step | elapsed %s | ETA %s",
                    time.strftime("%Y-%m-%d %H:%M:%S"),
                    step,
                    steps,
                    shown,
                    per_step,
                    _duration(time.perf_counter() - began),
                    _duration(per_step * (steps - step)),
                )
                window_start, window_steps = time.perf_counter(), 0
            out_of_time = time_limit_s is not None and time.perf_counter() - began > time_limit_s
            if out_of_time:
                log.warning("time limit reached at step %d of %d; stopping", step, steps)
            if step % validate_every == 0 or step == steps or out_of_time:
                module.eval()
                with torch.no_grad():
                    val = dict(validate())
                module.train()
                train_means = {f"train_{k}": v / max(count, 1) for k, v in sums.items()}
                sums, count = {}, 0
                entry = {"epoch": step / per_epoch, **train_means, **val}
                value = score(entry) if callable(score) else float(entry[score])
                best.end_epoch(entry, score=value)
                if not progress:
                    log.info(
                        "%s validation at step %d: %s (best %s at %s %d)",
                        time.strftime("%Y-%m-%d %H:%M:%S"),
                        step,
                        " ".join(f"{k} {v:.4f}" for k, v in val.items()),
                        _shown(best.score),
                        unit,
                        best.epoch,
                    )
                if path is not None:
                    _save_state(
                        path, step, module, optimiser, scheduler, best, generator, fingerprint
                    )
            if out_of_time:
                break
    finally:
        bar.close()
    return best


def epoch_steps(items: int, batch_size: int, *, drop_last: bool = True) -> int:
    """Steps of one :func:`fit_epochs` epoch over ``items`` items in batches of ``batch_size``.

    Example:
        >>> epoch_steps(10, 4), epoch_steps(10, 4, drop_last=False), epoch_steps(3, 8)
        (2, 3, 1)
    """
    if items < 1:
        raise ValueError("an epoch needs at least one training item")
    size = max(1, min(int(batch_size), int(items)))
    return items // size if drop_last else -(-items // size)


def fit_epochs(
    module: nn.Module,
    optimiser: torch.optim.Optimizer,
    train_step: Callable[[int, list[int]], Mapping[str, float]],
    validate: Callable[[], Mapping[str, float]],
    *,
    epochs: int,
    items: int,
    batch_size: int,
    generator: torch.Generator,
    drop_last: bool = True,
    **options: Any,
) -> BestEpoch:
    """:func:`fit` in epochs: each epoch is one pass over ``items`` training items.

    Batches hold ``size = min(batch_size, items)`` items; an epoch is
    :func:`epoch_steps` steps: ``items // size`` (``drop_last``: the rest of the order is
    left out) or ``ceil(items / size)``. At an
    epoch's first step the order ``torch.randperm(items, generator=generator)`` is drawn;
    ``train_step(step, batch)`` (``step`` 1-based over the whole run) gets the positions of
    its batch's items. Validation follows every epoch; the records' ``epoch`` counts
    epochs. ``options`` go to :func:`fit` (``state_path``, ``score``, ``scheduler``,
    ``on_epoch``...). A run resumed from a state saved at a validation continues exactly;
    one stopped inside an epoch (``time_limit_s``) draws a new order for that epoch's rest.

    Example:
        >>> gen = seed_everything(0)
        >>> net = torch.nn.Linear(1, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> xs = torch.linspace(-1, 1, 6)[:, None]
        >>> def step(i, batch):
        ...     loss = (net(xs[batch]) - 2 * xs[batch]).pow(2).mean()
        ...     opt.zero_grad(); loss.backward(); opt.step()
        ...     return {"loss": float(loss.detach())}
        >>> def validate():
        ...     return {"score": -float((net(xs) - 2 * xs).pow(2).mean())}
        >>> best = fit_epochs(net, opt, step, validate, epochs=3, items=6, batch_size=4,
        ...                   drop_last=False, generator=gen)
        >>> [h["epoch"] for h in best.history], sorted(best.history[0])
        ([1.0, 2.0, 3.0], ['epoch', 'score', 'train_loss'])
    """
    n = int(items)
    size = max(1, min(int(batch_size), n))
    per_epoch = epoch_steps(n, batch_size, drop_last=drop_last)
    current = -1  # the epoch whose order is drawn
    order: list[int] = []

    def step(i: int) -> Mapping[str, float]:
        nonlocal current, order
        epoch, k = divmod(i - 1, per_epoch)
        if epoch != current:
            current, order = epoch, torch.randperm(n, generator=generator).tolist()
        return train_step(i, order[k * size : (k + 1) * size])

    return fit(
        module,
        optimiser,
        step,
        validate,
        steps=int(epochs) * per_epoch,
        validate_every=per_epoch,
        steps_per_epoch=per_epoch,
        generator=generator,
        **options,
    )


def fit_and_save(
    module: nn.Module,
    optimiser: torch.optim.Optimizer,
    train_step: Callable[[int], Mapping[str, float]],
    validate: Callable[[], Mapping[str, float]],
    *,
    out: Path,
    family: str,
    config: Mapping[str, Any],
    settings: Any,
    data: Mapping[str, Any],
    score_name: str,
    device: str,
    progress: bool,
    generator: torch.Generator | None,
    started: float,
    scheduler: Any = None,
    log: logging.Logger = LOG,
    metadata: Mapping[str, Any] | None = None,
) -> BestEpoch:
    """:func:`fit` a ``mmreg train`` target and write its best weights as a checkpoint.

    ``settings`` is the target's settings dataclass; it must have ``steps``,
    ``validate_every``, ``log_every``, ``max_minutes`` (0: no limit) and ``seed``.
    ``data`` names the training data (recorded in the resume fingerprint and the
    summary, e.g. ``{"train": [...], "val": [...]}``); ``score_name`` names the
    validation score in the summary (``best_val_<score_name>``). The state file
    (:func:`state_file`) makes the run resumable and is removed once the checkpoint exists.
    """
    from mmreg.models import save_checkpoint

    fingerprint = {"settings": asdict(settings), **data, "device": device}
    state_path = state_file(out)
    best = fit(
        module,
        optimiser,
        train_step,
        validate,
        steps=settings.steps,
        validate_every=settings.validate_every,
        log_every=settings.log_every,
        progress=progress,
        state_path=state_path,
        fingerprint=fingerprint,
        generator=generator,
        scheduler=scheduler,
        log=log,
        desc=family,
        time_limit_s=settings.max_minutes * 60 if settings.max_minutes > 0 else None,
    )
    net = best.restore()
    summary = best.summary(
        device=device,
        settings=settings,
        training_data=dict(data),
        seed=settings.seed,
        seed_protocol=SEED_PROTOCOL,
        steps=settings.steps,
        torch_version=str(torch.__version__),
        python_version=platform.python_version(),
        parameters=sum(p.numel() for p in net.parameters()),
        **{
            f"best_val_{score_name}": best.score,
            f"final_val_{score_name}": best.history[-1]["score"] if best.history else None,
        },
    )
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    save_checkpoint(
        out,
        method=family,
        config=dict(config),
        state_dict=net.state_dict(),
        metadata={"training": summary, **dict(metadata or {})},
    )
    state_path.unlink(missing_ok=True)
    log.info("%s best validation %s %.3f at step %d", family, score_name, best.score, best.epoch)
    return best


def _save_state(
    path: Path,
    step: int,
    module: nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: Any,
    best: BestEpoch,
    generator: torch.Generator | None,
    fingerprint: Mapping[str, Any],
) -> None:
    state = {
        "step": step,
        "fingerprint": dict(fingerprint),
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "optimiser": optimiser.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "best": {
            "score": best.score,
            "epoch": best.epoch,
            "state": best.state,
            "history": best.history,
        },
        "rng": _rng_state(generator),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _resume(
    path: Path,
    module: nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: Any,
    best: BestEpoch,
    generator: torch.Generator | None,
    fingerprint: Mapping[str, Any],
    log: logging.Logger,
) -> int:
    """Load a state file into the objects; the step to continue after (0: none used)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt state is not fatal: start again
        log.warning("ignoring the training state %s: unreadable (%s)", path, type(exc).__name__)
        return 0
    if state.get("fingerprint") != dict(fingerprint):
        log.warning("ignoring the training state %s: it belongs to another run", path)
        return 0
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    module.load_state_dict(state["model"])
    module.to(device)
    optimiser.load_state_dict(state["optimiser"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    saved = state["best"]
    best.score, best.epoch = saved["score"], int(saved["epoch"])
    best._state = dict(saved["state"])
    best.history = list(saved["history"])
    _set_rng_state(state["rng"], generator)
    log.info("resuming from %s at step %d", path, int(state["step"]))
    return int(state["step"])
