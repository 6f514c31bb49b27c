"""``mmreg train unet-transfer``: a 2D U-Net for MR slices, trained on labels moved from DXA.

For each training pair the DXA is registered to the MR mid-coronal slice with a
registration method (any ``--methods`` spec; default ``contrastive-refine``, as in
Windsor et al. 2021), its label map is warped onto the slice
(:func:`~mmreg.segmentation.transfer.transfer_subject`), and a U-Net learns the
transferred labels from the MR fat and water slices. A subject whose registration fails
is skipped with a warning. Validation is by subject
(:func:`mmreg.training.split_items` of the subject ids); the epoch with the best Dice
against the validation subjects' *transferred* labels is kept (all a real study has).
When the MR's own ground truth exists, the checkpoint also records the Dice of the
U-Net and of the transferred labels themselves against it on the validation subjects
(the second bounds what the labels can teach).

The checkpoint (family ``unet-transfer``) stores the U-Net config, the working pixel
size and channel names, and metadata: transfer method, label table, subjects, history,
wall time. :func:`load_unet_transfer` gives a :class:`TransferSegmenter` that segments
MR slices of new subjects (:mod:`~mmreg.segmentation.evaluate` measures it).

Example (tiny: two phantom-like subjects built in memory; see the tests):
    >>> settings = UNetTransferSettings(method="sitk-rigid", epochs=1, width=4, depth=2)
    >>> settings.segmenter().epochs
    1
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mmreg.errors import InputError, UsageError
from mmreg.imaging.image import Grid, Image
from mmreg.imaging.preprocess import PREALIGN_MODES, normalize_intensity, resample_isotropic
from mmreg.imaging.transform import Transform
from mmreg.models import load_checkpoint, resolve_model, save_checkpoint
from mmreg.pipeline import Failure
from mmreg.segmentation.train import (
    SegmenterTrainSettings,
    TrainedSegmenter,
    dice_per_class,
    predict_proba,
    train_segmenter,
)
from mmreg.segmentation.transfer import (
    MRSlice,
    TransferredSubject,
    label_table,
    transfer_subject,
)
from mmreg.segmentation.unet import UNet2d, UNetConfig
from mmreg.training import SEED_PROTOCOL, seed_everything, split_items, state_file

__all__ = [
    "FAMILY",
    "TransferSegmenter",
    "UNetTransferSettings",
    "collect_subjects",
    "fit_unet_transfer",
    "label_table",
    "load_unet_transfer",
    "parse_model_option",
    "per_label_means",
    "save_unet_transfer",
    "train_unet_transfer",
    "truth_scores",
]

LOG = logging.getLogger("mmreg.train.unet-transfer")

#: Model family (checkpoint ``method``) of the transfer U-Net.
FAMILY = "unet-transfer"


@dataclass(frozen=True)
class UNetTransferSettings:
    """Settings of ``mmreg train unet-transfer`` (each field is a ``--option``)."""

    method: str = field(
        default="contrastive-refine",
        metadata={
            "help": "registration method that moves the DXA labels onto the MR slice "
            "(any --methods spec, e.g. sitk-rigid or contrastive-dense+sitk-rigid)"
        },
    )
    model: str = field(
        default="",
        metadata={
            "help": "weights of the method's learned family, FAMILY=PATH (several: comma-"
            "separated), e.g. contrastive-refine=refine.pt; empty: the shipped weights"
        },
    )
    prealign: str = field(
        default="com",
        metadata={"help": "pre-alignment before the method", "choices": PREALIGN_MODES},
    )
    width: int = field(default=16, metadata={"help": "U-Net channels at full resolution"})
    depth: int = field(default=4, metadata={"help": "U-Net downsamplings"})
    spacing_mm: float = field(
        default=0.0,
        metadata={"help": "pixel size the U-Net works at (0: the MR slice's own, 2.2 mm)"},
    )
    epochs: int = field(default=40, metadata={"help": "passes over the training subjects"})
    batch_size: int = field(default=4, metadata={"help": "slices per step"})
    learning_rate: float = field(default=2e-3, metadata={"help": "Adam step size"})
    val_fraction: float = field(default=0.2, metadata={"help": "share of subjects held out"})
    augment: bool = field(
        default=True, metadata={"help": "random contrast, brightness and shift of each slice"}
    )
    seed: int = field(
        default=0, metadata={"help": "seed of registration, split, initialisation, batches"}
    )

    def __post_init__(self) -> None:
        from mmreg.methods import parse_methods

        try:
            specs = parse_methods(self.method)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        if len(specs) != 1:
            raise ValueError("give one transfer method (an A+B chain is one method)")
        if self.prealign not in PREALIGN_MODES:
            raise ValueError(f"prealign must be one of {', '.join(PREALIGN_MODES)}")
        if not (self.spacing_mm >= 0 and math.isfinite(self.spacing_mm)):
            raise ValueError("spacing_mm must be 0 (native) or a positive number of mm")
        if self.width < 1 or self.depth < 1:
            raise ValueError("width and depth must be at least 1")
        self.segmenter()  # epochs, batch size, val_fraction

    def segmenter(self) -> SegmenterTrainSettings:
        """The U-Net training part of these settings."""
        return SegmenterTrainSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            width=self.width,
            depth=self.depth,
            val_fraction=self.val_fraction,
            augment=self.augment,
            seed=self.seed,
        )


def parse_model_option(value: str, method: str) -> dict[str, str]:
    """``--model`` (``FAMILY=PATH[,FAMILY=PATH]``) -> family -> path, all weights checked.

    Every learned family the method needs must have weights (given or shipped), so a
    missing file stops training before any subject is registered.

    Raises:
        UsageError: For a malformed item, a family the method does not use, a missing file.
        InputError: When a needed family has neither ``--model`` nor shipped weights.
    """
    from mmreg.methods import model_families
    from mmreg.models import parse_models

    items = [item for item in value.split(",") if item.strip()]
    models = parse_models(items, [method])
    for family in model_families([method]):
        resolve_model(family, models.get(family))
    return models


# --- data ---------------------------------------------------------------------------------------


def collect_subjects(
    pairs: Sequence[Mapping[str, Any]],
    *,
    method: str | Mapping[str, Transform],
    prealign_mode: str = "com",
    models: Mapping[str, str] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[list[TransferredSubject], list[dict[str, str]]]:
    """Transfer the labels of every pair; pairs that fail are skipped with a warning.

    Args:
        pairs: ``mmreg train`` pair records; one per subject and session is used.
        method: A method spec, or known transforms per subject id (for bounds).
        prealign_mode, models, seed, device: See :func:`transfer_subject`.
        progress: Show a progress bar.

    Returns:
        The transferred subjects and ``{"subject", "reason"}`` of the skipped ones.
    """
    from tqdm.auto import tqdm

    from mmreg.segmentation.transfer import subject_id

    done: set[str] = set()
    subjects: list[TransferredSubject] = []
    skipped: list[dict[str, str]] = []
    for record in tqdm(pairs, desc="transfer", unit="subject", disable=not progress):
        sid = subject_id(record)
        if sid in done:
            LOG.warning("sub-%s: more than one pair; only the first is used", sid)
            continue
        done.add(sid)
        try:
            how = method if isinstance(method, str) else method[sid]
            item = transfer_subject(
                record,
                how,
                prealign_mode=prealign_mode,
                seed=seed,
                device=device,
                models=dict(models or {}),
            )
            if not item.labels.any():
                raise InputError("the transferred labels miss the MR slice entirely")
        except Exception as exc:  # any failure of one subject: skip it, keep the others
            failure = Failure.from_exception(exc)
            LOG.warning("sub-%s skipped: %s", sid, failure.reason)
            LOG.debug("%s", failure.traceback)
            skipped.append({"subject": sid, "reason": failure.reason})
            continue
        subjects.append(item)
    return subjects, skipped


def _normalised(channels: npt.NDArray) -> npt.NDArray[np.float32]:
    # Robust per-channel [0, 1] (as the registration preprocessing): scanners differ.
    return np.stack([normalize_intensity(Image(c)).data for c in channels]).astype(np.float32)


def _working_input(mr: MRSlice, spacing: float) -> tuple[npt.NDArray[np.float32], Grid]:
    """The network's input ``(C, X, Y)`` on the working grid, and that grid."""
    if np.allclose(mr.grid.spacing, spacing, rtol=1e-4):
        return _normalised(mr.channels), mr.grid
    images = [resample_isotropic(Image(c, mr.grid.affine), spacing) for c in mr.channels]
    return _normalised(np.stack([im.data for im in images])), images[0].grid


def _working_labels(labels: npt.NDArray, mr: MRSlice, spacing: float) -> npt.NDArray[np.int64]:
    if np.allclose(mr.grid.spacing, spacing, rtol=1e-4):
        return labels.astype(np.int64)
    image = resample_isotropic(Image(labels.astype(np.int32), mr.grid.affine), spacing, order=0)
    return image.data.astype(np.int64)


# --- the segmenter ------------------------------------------------------------------------------


@dataclass
class TransferSegmenter:
    """A trained transfer U-Net with what it needs to segment a new MR slice.

    Attributes:
        model: The network (eval mode).
        config: Its architecture.
        spacing_mm: Pixel size of its working grid.
        channels: The MR channels it reads, in order (``("fat", "water")``).
        label_names: Label index -> name (background included when known).
        metadata: The checkpoint's metadata (empty before saving).
    """

    model: UNet2d
    config: UNetConfig
    spacing_mm: float
    channels: tuple[str, ...]
    label_names: dict[int, str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, mr: MRSlice, *, device: str = "cpu") -> Image:
        """Labels (int32) on the MR slice's own grid.

        Raises:
            InputError: When the slice's channels are not the ones the model was trained on.
        """
        if tuple(mr.roles) != tuple(self.channels):
            raise InputError(
                f"the model reads MR channels {self.channels}, the slice has {mr.roles}"
            )
        self.model.to(device)
        x, grid = _working_input(mr, self.spacing_mm)
        probs = predict_proba(self.model, x, device=device)
        if grid.shape != mr.grid.shape or not np.allclose(grid.affine, mr.grid.affine):
            # Probabilities, not labels, go back to the slice grid: smoother borders.
            identity = Transform.identity(ndim=2)
            probs = np.stack([identity.apply(Image(p, grid.affine), mr.grid).data for p in probs])
        return Image(probs.argmax(0).astype(np.int32), mr.grid.affine)


def per_label_means(
    scores: Sequence[Sequence[float]], names: Mapping[int, str]
) -> dict[str, float | None]:
    """Mean over subjects of per-class Dice lists (classes 1..K), by label name, and ``mean``.

    NaN entries (a class in neither map) are left out; a class never seen gives ``None``.

    Example:
        >>> per_label_means([[0.8, float("nan")], [0.6, 0.5]], {1: "spine"})
        {'spine': 0.7, '2': 0.5, 'mean': 0.6}
    """
    table = np.array(scores, dtype=np.float64).reshape(len(scores), -1)
    out: dict[str, float | None] = {}
    for k in range(table.shape[1]):
        column = table[:, k][np.isfinite(table[:, k])]
        mean = round(float(column.mean()), 4) if column.size else None
        out[names.get(k + 1) or str(k + 1)] = mean
    values = [v for v in out.values() if v is not None]
    out["mean"] = round(float(np.mean(values)), 4) if values else None
    return out


def truth_scores(
    segmenter: TransferSegmenter,
    subjects: Sequence[TransferredSubject],
    *,
    device: str = "cpu",
) -> dict[str, Any] | None:
    """Per-label Dice against the MR ground truth: the U-Net's and the transferred labels'.

    Against the slice's own labels (``unet_dice``, ``transferred_dice``) and, where the
    MR's 3D labels are known, against their projection footprint, what a DXA label
    stands for (``unet_dice_footprint``, ``transferred_dice_footprint``). ``None`` when
    none of ``subjects`` has ground truth.
    """
    known = [s for s in subjects if s.truth is not None or s.footprint is not None]
    if not known:
        return None
    n = segmenter.config.n_classes
    scores: dict[str, list[list[float]]] = {}
    for item in known:
        predicted = segmenter.predict(item.mr, device=device).data
        for suffix, truth in (("", item.truth), ("_footprint", item.footprint)):
            if truth is None:
                continue
            scores.setdefault(f"unet_dice{suffix}", []).append(dice_per_class(predicted, truth, n))
            scores.setdefault(f"transferred_dice{suffix}", []).append(
                dice_per_class(item.labels, truth, n)
            )
    out: dict[str, Any] = {"n_subjects": len(known)}
    for key, values in scores.items():
        out[key] = per_label_means(values, segmenter.label_names)
    return out


def fit_unet_transfer(
    subjects: Sequence[TransferredSubject],
    settings: UNetTransferSettings,
    *,
    label_names: Mapping[int, str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    state_path: Path | None = None,
) -> tuple[TransferSegmenter, dict[str, Any]]:
    """Train the U-Net on transferred subjects; return it and a training summary.

    Subjects are split into training and validation by their ids
    (:func:`mmreg.training.split_items` with ``val_fraction`` and ``seed``).
    ``state_path``: a resumable training state (``None``: none is kept).

    Raises:
        InputError: Without subjects, for a subject given twice, or when their MR
            channels differ.
    """
    if not subjects:
        raise InputError("no subject with transferred labels to train on")
    by_id = {s.subject: s for s in subjects}
    if len(by_id) != len(subjects):
        raise InputError("each subject (and session) can be given once")
    channels = subjects[0].mr.roles
    for item in subjects:
        if item.mr.roles != channels:
            raise InputError(
                f"sub-{item.subject}: MR channels {item.mr.roles}, others have {channels}"
            )
    spacing = settings.spacing_mm or float(min(subjects[0].mr.grid.spacing))
    train_ids, val_ids = split_items(list(by_id), settings.val_fraction, settings.seed)
    order, n_val = [by_id[i] for i in train_ids + val_ids], len(val_ids)
    images = [_working_input(s.mr, spacing)[0] for s in order]
    labels = [_working_labels(s.labels, s.mr, spacing) for s in order]
    names = dict(label_names or {})
    n_classes = int(max([max(names, default=0), *(int(y.max()) for y in labels)])) + 1
    start = time.perf_counter()
    trained: TrainedSegmenter = train_segmenter(
        images,
        labels,
        n_classes=n_classes,
        settings=settings.segmenter(),
        device=device,
        progress=progress,
        n_val=n_val,
        state_path=state_path,
    )
    wall = time.perf_counter() - start
    segmenter = TransferSegmenter(
        trained.model.cpu(), trained.config, spacing, tuple(channels), names
    )
    train_part, val_part = order[: len(order) - n_val], order[len(order) - n_val :]
    summary: dict[str, Any] = {
        "n_subjects": len(order),
        "train_subjects": [s.subject for s in train_part],
        "val_subjects": [s.subject for s in val_part],
        "best_epoch": trained.best_epoch,
        "best_val_dice_transferred": round(trained.best_val_dice, 4),
        "history": trained.history,
        "train_wall_time_s": round(wall, 1),
        "device": device,
        "spacing_mm": spacing,
        "settings": asdict(settings),
        "seed": settings.seed,
        "seed_protocol": SEED_PROTOCOL,
    }
    scores = truth_scores(segmenter, val_part, device="cpu")
    if scores is not None:
        summary["val_truth"] = scores
        LOG.info(
            "validation Dice vs MR ground truth: U-Net %s, transferred labels %s",
            scores["unet_dice"]["mean"],
            scores["transferred_dice"]["mean"],
        )
    return segmenter, summary


def save_unet_transfer(out: Path, segmenter: TransferSegmenter, summary: Mapping[str, Any]) -> str:
    """Write an ``unet-transfer`` checkpoint; return the file's sha256."""
    config = {
        "unet": asdict(segmenter.config),
        "spacing_mm": float(segmenter.spacing_mm),
        "channels": list(segmenter.channels),
    }
    metadata = {
        "label_names": {str(k): v for k, v in sorted(segmenter.label_names.items())},
        "training": dict(summary),
    }
    return save_checkpoint(
        out,
        method=FAMILY,
        config=config,
        state_dict=segmenter.model.state_dict(),
        metadata=metadata,
    )


def load_unet_transfer(
    path: str | Path | None = None, *, expected_sha256: str | None = None
) -> TransferSegmenter:
    """Verify and load an ``unet-transfer`` checkpoint (``None``: the shipped one).

    Raises:
        InputError: For a missing, tampered or foreign file.
    """
    checkpoint = load_checkpoint(
        resolve_model(FAMILY, path), method=FAMILY, expected_sha256=expected_sha256
    )
    config = checkpoint.config
    unet = UNetConfig(**config["unet"])
    model = unet.build()
    model.load_state_dict(checkpoint.state_dict)
    model.eval()
    names = {int(k): v for k, v in checkpoint.metadata.get("label_names", {}).items()}
    return TransferSegmenter(
        model,
        unet,
        float(config["spacing_mm"]),
        tuple(config["channels"]),
        names,
        dict(checkpoint.metadata),
    )


# --- the target ---------------------------------------------------------------------------------


def train_unet_transfer(
    pairs: Sequence[Mapping[str, Any]],
    *,
    out: Path,
    settings: UNetTransferSettings,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """``mmreg train unet-transfer``: transfer DXA labels to MR slices, train, save.

    A resumable state of the U-Net training is kept next to ``out``
    (:func:`mmreg.training.state_file`; removed once the checkpoint exists).

    Args:
        pairs: ``mmreg train`` pair records (DXA fixed with its ``fixed_dseg``, MR moving).
        out: The ``.pt`` file to write (with a ``.sha256`` sidecar).
        settings: :class:`UNetTransferSettings`.
        device: ``cpu`` or ``cuda`` (registration and U-Net).
        progress: Show progress bars.

    Returns:
        ``out``.

    Raises:
        InputError: When no subject could be transferred, or weights are missing.
        UsageError: For a malformed ``--model``.
    """
    start = time.perf_counter()
    models = parse_model_option(settings.model, settings.method)
    seed_everything(settings.seed)  # registration methods may draw from the global RNGs
    subjects, skipped = collect_subjects(
        pairs,
        method=settings.method,
        prealign_mode=settings.prealign,
        models=models,
        seed=settings.seed,
        device=device,
        progress=progress,
    )
    if not subjects:
        first = skipped[0]["reason"] if skipped else "no pair"
        raise InputError(f"no subject could be transferred with {settings.method}: {first}")
    transfer_s = time.perf_counter() - start
    names = label_table(pairs)
    state = state_file(out)
    segmenter, summary = fit_unet_transfer(
        subjects, settings, label_names=names, device=device, progress=progress, state_path=state
    )
    from mmreg.methods import model_families
    from mmreg.models import model_record

    used = {f: model_record(f, models.get(f)) for f in model_families([settings.method])}
    summary = {
        "transfer_method": settings.method,
        "transfer_models": used,
        "prealign": settings.prealign,
        **summary,
        "skipped": skipped,
        "transfer_wall_time_s": round(transfer_s, 1),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    save_unet_transfer(Path(out), segmenter, summary)
    state.unlink(missing_ok=True)
    return Path(out)
