"""Train the contrastive dual encoder: ``mmreg train contrastive BIDS_DIR --out MODEL.pt``.

Training (Windsor et al. 2021): each batch holds B subjects' DXA and MR images; every
DXA is compared with every MR (dense: the best shift of the MR map over the DXA map,
:func:`~mmreg.methods.contrastive.losses.dense_similarity`; global: cosine of pooled
vectors), and the symmetric InfoNCE loss (temperature 0.01) pulls each subject's two
scans together and pushes the other subjects' apart. No alignment and no labels are
needed: the subject identity is the only supervision.

A fraction of the subjects is held out (:func:`mmreg.training.split_items`, at least two
on each side); after each epoch their full similarity matrix gives the validation InfoNCE
and recall@1, and the epoch with the best validation (highest recall@1, then lowest loss)
is saved. The loop, seeding and resumable state are the shared engine's
(:func:`mmreg.training.fit_epochs`); on the CPU, with a seed, training is deterministic.

Example (tiny, from in-memory images):
    >>> from mmreg.methods.contrastive.data import ChannelImage
    >>> rng = np.random.default_rng(0)
    >>> pairs = [PairImages(f"s{i}", ChannelImage(rng.random((2, 32, 24)), np.eye(4)),
    ...                     ChannelImage(rng.random((2, 24, 16)), np.eye(4))) for i in range(4)]
    >>> settings = ContrastiveTrainSettings(epochs=1, batch_size=2, widths=(4, 8), embed_dim=8,
    ...                                     shared_levels=1,
    ...                                     spacing_mm=1.0, val_fraction=0.5)
    >>> model, summary = fit_contrastive(pairs, settings, progress=False)
    >>> summary["n_train"], summary["n_val"]
    (2, 2)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from mmreg.errors import InputError
from mmreg.methods.contrastive.augment import AugmentSettings, augment
from mmreg.methods.contrastive.data import (
    MAX_CHANNELS,
    ChannelImage,
    as_channels,
    covering_shape,
    load_channels,
)
from mmreg.methods.contrastive.features import canvas, check_channels, prepare
from mmreg.methods.contrastive.losses import dense_similarity, global_similarity, info_nce
from mmreg.methods.contrastive.model import ContrastiveConfig, DualEncoder, cell_mask
from mmreg.models import save_checkpoint
from mmreg.training import (
    SEED_PROTOCOL,
    epoch_steps,
    fit_epochs,
    seed_everything,
    split_items,
    state_file,
)

__all__ = [
    "ContrastiveTrainSettings",
    "PairImages",
    "batch_similarity",
    "deterministic",
    "fit_contrastive",
    "read_pairs",
    "split_subjects",
    "train_contrastive",
]

LOG = logging.getLogger("mmreg.train.contrastive")


@dataclass(frozen=True)
class PairImages:
    """One subject's DXA and MR images (channels first, any grid)."""

    subject: str
    dxa: ChannelImage
    mr: ChannelImage


@dataclass(frozen=True)
class ContrastiveTrainSettings:
    """Settings of ``mmreg train contrastive`` (each field is a ``--option``)."""

    fixed_modality: str = field(
        default="dxa",
        metadata={
            "help": "which image of each training pair is the DXA (the other is the MR slice)",
            "choices": ("dxa", "mr"),
        },
    )
    pooling: str = field(
        default="dense",
        metadata={
            "help": "dense spatial embeddings (the method) or global pooling (the baseline)",
            "choices": ("dense", "global"),
        },
    )
    epochs: int = field(default=30, metadata={"help": "passes over the training subjects"})
    batch_size: int = field(
        default=16, metadata={"help": "subjects per batch (each batch's others are negatives)"}
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    temperature: float = field(default=0.01, metadata={"help": "InfoNCE temperature"})
    spacing_mm: float = field(
        default=4.4, metadata={"help": "pixel size (mm) of the grid the encoders read"}
    )
    embed_dim: int = field(default=128, metadata={"help": "embedding channels"})
    norm: str = field(
        default="batch",
        metadata={"help": "normalisation layers", "choices": ("batch", "group", "none")},
    )
    max_shift_mm: float = field(
        default=250.0,
        metadata={
            "help": "shift prior: only shifts that keep the image centres within this "
            "distance (mm, per axis) count (0: any shift)"
        },
    )
    shared_levels: int = field(
        default=3,
        metadata={"help": "deepest encoder levels whose convolutions DXA and MR share"},
    )
    softness: float = field(
        default=0.02,
        metadata={
            "help": "initial softness of the maximum over shifts, decaying linearly to the "
            "paper's hard maximum by the last step (0: hard throughout)"
        },
    )
    max_shift_px: int = field(
        default=5, metadata={"help": "augmentation: largest shift in working-grid pixels"}
    )
    brightness: float = field(default=0.2, metadata={"help": "augmentation: gain range"})
    contrast: float = field(default=0.2, metadata={"help": "augmentation: contrast range"})
    val_fraction: float = field(
        default=0.15, metadata={"help": "fraction of subjects held out for validation"}
    )
    seed: int = field(default=0, metadata={"help": "seed of initialisation, split and batches"})
    init: str = field(
        default="",
        metadata={
            "help": "contrastive checkpoint whose weights to start from (same widths and "
            "embedding; e.g. a coarser spacing_mm, for coarse-to-fine training)"
        },
    )
    # Structured or architectural fields (kept at their defaults on the CLI).
    widths: tuple[int, ...] = (16, 32, 64, 96)
    convs_per_level: int = field(default=2, metadata={"help": "3x3 convolutions per level"})

    def __post_init__(self) -> None:
        if self.fixed_modality not in ("dxa", "mr"):
            raise ValueError("fixed_modality must be dxa or mr")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(
                "need epochs >= 1 and batch_size >= 2 (negatives come from the batch)"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if not self.learning_rate > 0:
            raise ValueError("learning_rate must be positive")

    def model_config(self, dxa_channels: int, mr_channels: int) -> ContrastiveConfig:
        """The architecture these settings train."""
        return ContrastiveConfig(
            dxa_channels=dxa_channels,
            mr_channels=mr_channels,
            widths=self.widths,
            convs_per_level=self.convs_per_level,
            embed_dim=self.embed_dim,
            norm=self.norm,
            pooling=self.pooling,
            spacing_mm=self.spacing_mm,
            temperature=self.temperature,
            max_shift_mm=self.max_shift_mm,
            shared_levels=self.shared_levels,
        )

    @property
    def augmentation(self) -> AugmentSettings:
        return AugmentSettings(self.max_shift_px, self.brightness, self.contrast)


# --- data ------------------------------------------------------------------------------------


def _load_record(record: Mapping[str, Any]) -> tuple[ChannelImage, ChannelImage]:
    """Both images of a pair record as the participant level sees them: a 3D MR becomes
    its mid-coronal slice, and Dixon/DXA channel siblings come along."""
    from mmreg.imaging.image import load_spatial
    from mmreg.pipeline import load_pair

    paths = [str(record["fixed"]), str(record["moving"])]
    shapes = [load_spatial(p).shape for p in paths]
    if not any(len(s) == 3 and s[2] > MAX_CHANNELS for s in shapes):
        # Both 2D (or channels-last files): read as they are, with their siblings.
        from mmreg.imaging.planar import channel_siblings

        loaded = []
        for path in paths:
            siblings = channel_siblings(path)
            loaded.append(load_channels(siblings if len(siblings) > 1 else path))
        return loaded[0], loaded[1]
    planar = load_pair(paths[0], paths[1], coronal_slice=True)
    return as_channels(planar.fixed), as_channels(planar.moving)


def read_pairs(
    pairs: Sequence[Mapping[str, Any]], *, fixed_modality: str = "dxa"
) -> list[PairImages]:
    """Load ``mmreg train`` pair records (``fixed``/``moving`` paths) as channel images.

    Records of one subject after the first are skipped (one positive pair per subject:
    two pairs of one subject in a batch would be each other's false negatives).

    Raises:
        InputError: For unreadable images, or when no pair is left.
    """
    out: list[PairImages] = []
    seen: set[str] = set()
    for record in pairs:
        subject = str(record["subject"])
        if record.get("session"):
            subject = f"{subject}_ses-{record['session']}"
        if subject in seen:
            LOG.warning("sub-%s: more than one pair; only the first is used", subject)
            continue
        seen.add(subject)
        fixed, moving = _load_record(record)
        dxa, mr = (fixed, moving) if fixed_modality == "dxa" else (moving, fixed)
        out.append(PairImages(subject, dxa, mr))
    if not out:
        raise InputError("no training pair")
    return out


def split_subjects(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train/validation split of ``n`` subjects' positions: :func:`mmreg.training.split_items`
    with at least 2 on each side (recall@1 of one subject, and InfoNCE without negatives,
    mean nothing); fewer than 4 subjects are all for training.

    Example:
        >>> split_subjects(10, 0.2, 0)[1].__len__()
        2
    """
    return split_items(range(n), val_fraction, seed, min_each=2)


@dataclass
class _Canvases:
    """All subjects on common working-grid canvases (so batches stack)."""

    dxa: torch.Tensor  # (N, C, H, W)
    dxa_mask: torch.Tensor  # (N, 1, H, W)
    mr: torch.Tensor
    mr_mask: torch.Tensor


def _canvases(pairs: Sequence[PairImages], config: ContrastiveConfig) -> _Canvases:
    s, k = config.spacing_mm, config.stride
    # Room for the augmentation shifts is not needed: shifted-out pixels are simply lost.
    shape_d = tuple(np.max([covering_shape(p.dxa, s, multiple=k) for p in pairs], axis=0))
    shape_m = tuple(np.max([covering_shape(p.mr, s, multiple=k) for p in pairs], axis=0))
    arrays: dict[str, list[npt.NDArray[np.float32]]] = {"d": [], "dm": [], "m": [], "mm": []}
    for p in pairs:
        d, dm, _ = canvas(prepare(p.dxa), s, shape_d)
        m, mm, _ = canvas(prepare(p.mr), s, shape_m)
        arrays["d"].append(d)
        arrays["dm"].append(dm)
        arrays["m"].append(m)
        arrays["mm"].append(mm)
    t = {key: torch.from_numpy(np.stack(v)) for key, v in arrays.items()}
    return _Canvases(t["d"], t["dm"], t["m"], t["mm"])


def batch_similarity(
    model: DualEncoder,
    dxa: torch.Tensor,
    dxa_mask: torch.Tensor,
    mr: torch.Tensor,
    mr_mask: torch.Tensor,
    *,
    softness: float = 0.0,
) -> torch.Tensor:
    """``(A, B)`` similarities of a DXA batch and an MR batch (canvases with footprint masks).

    Dense: embedding cells outside an image's footprint are zeroed (DXA) or masked out
    (MR), so only image content is compared and the MR normalisation counts only its
    own cells; shifts are limited by the model's ``max_shift_mm`` prior (canvases are
    centred on their images). Global: cosine similarity of the pooled embeddings.
    """
    fd, fm = model(dxa, mr, dxa_mask, mr_mask)
    if model.config.pooling == "global":
        return global_similarity(fd, fm)
    stride = model.config.stride
    fd = fd * cell_mask(dxa_mask, stride)
    return dense_similarity(
        fd,
        fm,
        cell_mask(mr_mask, stride),
        max_shift=model.config.max_shift_cells,
        softness=softness,
    )


# --- training --------------------------------------------------------------------------------


@contextmanager
def deterministic(seed: int) -> Iterator[torch.Generator]:
    """Seed (:func:`mmreg.training.seed_everything`) and ask for deterministic kernels for
    the duration of the block; yields the sampling generator."""
    previous = torch.are_deterministic_algorithms_enabled()
    generator = seed_everything(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield generator
    finally:
        torch.use_deterministic_algorithms(previous)


def _start_from(model: DualEncoder, path: str) -> None:
    """Load a contrastive checkpoint's weights into ``model`` (its grid spacing may differ).

    Raises:
        InputError: When the checkpoint's architecture is not ``model``'s.
    """
    from mmreg.methods.contrastive.features import load_model

    source, checkpoint = load_model(path)
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise InputError(f"{Path(path).name}: its encoder does not fit these settings") from exc
    LOG.info(
        "starting from %s (sha256 %s, %.1f mm grid)",
        path,
        checkpoint.sha256[:12],
        source.config.spacing_mm,
    )


@torch.no_grad()
def _evaluate(
    model: DualEncoder, data: _Canvases, index: list[int], device: str, chunk: int = 16
) -> dict[str, float]:
    """Validation InfoNCE and recall@1 (both directions) over the whole held-out set."""
    model.eval()
    rows = []
    for start in range(0, len(index), chunk):
        a = index[start : start + chunk]
        cols = []
        for start_b in range(0, len(index), chunk):
            b = index[start_b : start_b + chunk]
            cols.append(
                batch_similarity(
                    model,
                    data.dxa[a].to(device),
                    data.dxa_mask[a].to(device),
                    data.mr[b].to(device),
                    data.mr_mask[b].to(device),
                ).cpu()
            )
        rows.append(torch.cat(cols, dim=1))
    sim = torch.cat(rows, dim=0)
    loss = info_nce(sim, temperature=model.config.temperature).item()
    target = torch.arange(len(index))
    recall = 0.5 * (
        (sim.argmax(dim=1) == target).float().mean() + (sim.argmax(dim=0) == target).float().mean()
    )
    return {"val_loss": float(loss), "val_recall_at_1": float(recall)}


def _score(record: Mapping[str, float]) -> tuple[float, float]:
    """Highest validation recall@1, then lowest loss (without held-out subjects: training loss)."""
    if "val_recall_at_1" in record:
        return record["val_recall_at_1"], -record["val_loss"]
    return 0.0, -record["train_loss"]


def fit_contrastive(
    pairs: Sequence[PairImages],
    settings: ContrastiveTrainSettings,
    *,
    device: str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    state_path: Path | None = None,
) -> tuple[DualEncoder, dict[str, Any]]:
    """Train a dual encoder on in-memory pairs; return the best-validation model and a summary.

    Args:
        pairs: One :class:`PairImages` per subject (at least 2 for training).
        settings: Hyperparameters.
        device: ``cpu`` or ``cuda``.
        progress: Show a progress bar.
        on_epoch: Called with each epoch's record (loss, validation metrics).
        state_path: Resumable training state (see :func:`mmreg.training.fit`; ``None``:
            none is kept).

    Returns:
        The model (eval mode, on the CPU) and a summary: sizes, best epoch, history, seed.
    """
    if len(pairs) < 2:
        raise InputError("contrastive training needs at least 2 subjects")
    config = settings.model_config(pairs[0].dxa.channels, pairs[0].mr.channels)
    train_idx, val_idx = split_subjects(len(pairs), settings.val_fraction, settings.seed)
    start = time.perf_counter()
    with deterministic(settings.seed) as generator:
        model = DualEncoder(config)
        if settings.init:
            _start_from(model, settings.init)
        for p in pairs:
            check_channels(model, p.dxa, "dxa")
            check_channels(model, p.mr, "mr")
        data = _canvases(pairs, config)
        model.to(device)
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        total = settings.epochs * epoch_steps(len(train_idx), settings.batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        )

        def train_step(step: int, batch: list[int]) -> dict[str, float]:
            idx = [train_idx[k] for k in batch]
            dxa, dxa_mask = augment(
                data.dxa[idx], data.dxa_mask[idx], settings.augmentation, generator
            )
            mr, mr_mask = augment(
                data.mr[idx], data.mr_mask[idx], settings.augmentation, generator
            )
            sim = batch_similarity(
                model,
                dxa.to(device),
                dxa_mask.to(device),
                mr.to(device),
                mr_mask.to(device),
                softness=settings.softness * (1.0 - (step - 1) / total),
            )
            loss = info_nce(sim, temperature=config.temperature)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            return {"loss": float(loss.detach())}

        def validate() -> dict[str, float]:
            return _evaluate(model, data, val_idx, device) if val_idx else {}

        subjects = [p.subject for p in pairs]
        best = fit_epochs(
            model,
            optimiser,
            train_step,
            validate,
            epochs=settings.epochs,
            items=len(train_idx),
            batch_size=settings.batch_size,
            generator=generator,
            score=_score,
            scheduler=schedule,
            progress=progress,
            state_path=state_path,
            fingerprint={
                "settings": asdict(settings),
                "subjects": subjects,
                "val": [subjects[i] for i in val_idx],
                "device": device,
            },
            log=LOG,
            desc="contrastive",
            on_epoch=on_epoch,
        )
    best.restore()
    best.started = start  # the wall time includes the canvases
    summary = best.summary(
        device=device,
        settings=settings,
        n_subjects=len(pairs),
        n_train=len(train_idx),
        n_val=len(val_idx),
        val_subjects=[pairs[i].subject for i in val_idx],
        seed=settings.seed,
        seed_protocol=SEED_PROTOCOL,
    )
    return model, summary


def train_contrastive(
    pairs: Sequence[Mapping[str, Any]],
    *,
    out: Path,
    settings: ContrastiveTrainSettings,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """``mmreg train contrastive``: train on BIDS pair records and write the checkpoint.

    A resumable state is kept next to ``out`` while training
    (:func:`mmreg.training.state_file`; removed once the checkpoint exists).

    Args:
        pairs: ``mmreg train`` pair records (``subject``, ``fixed``, ``moving`` paths...).
        out: The ``.pt`` file to write (with a ``.sha256`` sidecar).
        settings: Hyperparameters (:class:`ContrastiveTrainSettings`).
        device: ``cpu`` or ``cuda``.
        progress: Show a progress bar.

    Returns:
        ``out``.
    """
    images = read_pairs(pairs, fixed_modality=settings.fixed_modality)
    state = state_file(out)
    model, summary = fit_contrastive(
        images, settings, device=device, progress=progress, state_path=state
    )
    save_contrastive(out, model, summary)
    state.unlink(missing_ok=True)
    return Path(out)


def save_contrastive(out: Path, model: DualEncoder, summary: Mapping[str, Any]) -> str:
    """Write a ``contrastive`` checkpoint of ``model`` with the training summary as metadata."""
    return save_checkpoint(
        out,
        method="contrastive",
        config={"model": model.config.to_dict()},
        state_dict=model.state_dict(),
        metadata={"training": dict(summary)},
    )
