"""Training the KeyMorph keypoint detector: the settings and the loop.

The parts, one module each:

* :mod:`~mmreg.methods.keymorph.data`: training subjects (phantoms, BIDS pairs,
  labelled images) and their preparation;
* :mod:`~mmreg.methods.keymorph.anchors`: the points keeping pretraining keypoints
  spread over the anatomy;
* :mod:`~mmreg.methods.keymorph.views`: each step's random views, rendered as a batch
  (a pure function of ``(seed, step)``, rendered ahead by a worker process);
* :mod:`~mmreg.methods.keymorph.objective`: the loss terms and the validation score.

The losses, by training phase:

* ``pretrain`` (self-supervised): keypoints must follow the warp -- the two
  views' keypoints, mapped back to the subject's world, must coincide (keypoint
  consistency, also across contrasts of the same subject) -- and stay near *anchor*
  points (template points mapped into the subject by its landmarks, or the
  subject's own foreground clusters), which keeps them spread over the anatomy
  instead of collapsing onto one point.
* ``unsupervised``: the image MSE between a view and a same-modality view of
  another subject warped by the transform fitted to the keypoints, plus keypoint
  consistency on same-subject multi-modal pairs.
* ``supervised``: soft Dice between the labels of a view and the warped labels of
  another view (same or other subject) -- again through the fitted transform --
  plus keypoint consistency on same-subject pairs.

The loop is the shared engine's (:func:`mmreg.training.fit`): subjects are split by
name with :func:`mmreg.training.split_items`, seeded with
:func:`mmreg.training.seed_everything`; the held-out subjects are scored every
``val_every`` steps by the error of the affine fitted to the keypoints of fixed random
view pairs (mean over anchor points, mm); the best weights are written with
:func:`mmreg.models.save_checkpoint`. A resumable state is kept at ``<out>.state``
(removed once the run has done all its steps): a run stopped by ``max_minutes`` or
interrupted continues from it when started again with the same settings and data.

Example (a tiny 2D run; real training: see ``docs/keymorph.md``):
    >>> import numpy as np
    >>> from mmreg.imaging.image import Image
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:40, :40]
    >>> blob = ((yy - 20) ** 2 / 150 + (xx - 18) ** 2 / 90 < 1).astype(np.float32)
    >>> subjects = [TrainingSubject(f"s{i}", {"T1w": Image(blob * (0.5 + rng.random((40, 40))),
    ...             np.diag([2.0, 2.0, 1.0, 1.0]))}) for i in range(2)]
    >>> settings = KeyMorphTrainSettings(pretrain_steps=2, steps=0, batch_size=1,
    ...     n_keypoints=4, input_size=16, input_mm=96.0, width=2, levels=3, val_every=1)
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "km.pt"
    >>> train_keymorph(subjects, out=out, settings=settings, progress=False).name
    'km.pt'
"""

from __future__ import annotations

import copy
import logging
import math
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmreg.errors import InputError
from mmreg.methods.keymorph.anchors import template_points
from mmreg.methods.keymorph.augment import AugmentSettings
from mmreg.methods.keymorph.data import (
    TrainingSubject,
    pair_data,
    phantom_subjects,
    prepare_source,
    subjects_from_images,
    subjects_from_pairs,
)
from mmreg.methods.keymorph.model import DetectorConfig, KeypointDetector, build_detector
from mmreg.methods.keymorph.objective import (
    anchor_weight,
    loss_terms,
    total_loss,
    validation_scores,
)
from mmreg.methods.keymorph.synth import SynthSettings
from mmreg.methods.keymorph.views import BatchMaker, BatchStream
from mmreg.records import LabelledImage
from mmreg.training import SEED_PROTOCOL, fit, seed_everything, split_items

__all__ = [
    "FAMILY",
    "KeyMorphTrainSettings",
    "TrainingSubject",
    "load_detector",
    "phantom_subjects",
    "subjects_from_images",
    "subjects_from_pairs",
    "template_points",
    "train_from_pairs",
    "train_keymorph",
]

LOG = logging.getLogger("mmreg.train.keymorph")
#: The model family name (checkpoint ``method``, ``--model keymorph=...``).
FAMILY = "keymorph"
VARIANTS = ("pretrain", "unsupervised", "supervised")
FITS = ("affine", "tps", "mixed")


@dataclass(frozen=True)
class KeyMorphTrainSettings:
    """Hyperparameters of KeyMorph training (the fields become ``mmreg train`` options).

    The run is ``pretrain_steps`` self-supervised steps, then ``steps`` steps of
    ``variant`` (``pretrain`` continues the self-supervised losses).
    """

    variant: str = field(
        default="supervised",
        metadata={"help": "losses after pretraining", "choices": VARIANTS},
    )
    pretrain_steps: int = field(default=1600, metadata={"help": "self-supervised steps"})
    steps: int = field(default=400, metadata={"help": "steps of the variant after pretraining"})
    batch_size: int = field(default=4, metadata={"help": "view pairs per step"})
    learning_rate: float = field(default=2e-3, metadata={"help": "Adam step size (peak)"})
    n_keypoints: int = field(default=64, metadata={"help": "keypoints (up to 512)"})
    input_size: int = field(default=48, metadata={"help": "detector grid voxels per axis"})
    input_mm: float = field(
        default=240.0, metadata={"help": "detector grid side (mm); holds the head in any pose"}
    )
    width: int = field(default=8, metadata={"help": "channels at full resolution"})
    levels: int = field(default=4, metadata={"help": "resolution levels (width doubles)"})
    heatmap_level: int = field(default=1, metadata={"help": "level of the heatmaps (0 = full)"})
    spacing_mm: float = field(default=2.0, metadata={"help": "preprocessing voxel size (mm)"})
    curriculum: float = field(
        default=0.4,
        metadata={"help": "share of the pretraining over which rotations widen to 180 deg"},
    )
    anchor_weight: float = field(
        default=1.0, metadata={"help": "weight of the anchor loss at the start"}
    )
    anchor_final: float = field(
        default=0.1, metadata={"help": "anchor weight at the end, relative to the start"}
    )
    consistency_weight: float = field(default=1.0, metadata={"help": "keypoint consistency"})
    dice_weight: float = field(default=20.0, metadata={"help": "soft Dice (supervised)"})
    mse_weight: float = field(default=200.0, metadata={"help": "image MSE (unsupervised)"})
    fit: str = field(
        default="mixed", metadata={"help": "transform of the image/label losses", "choices": FITS}
    )
    lambda_min: float = field(default=1e-3, metadata={"help": "smallest TPS lambda"})
    lambda_max: float = field(default=10.0, metadata={"help": "largest TPS lambda"})
    same_subject_prob: float = field(
        default=0.7, metadata={"help": "share of supervised pairs from one subject"}
    )
    val_fraction: float = field(default=0.2, metadata={"help": "share of subjects held out"})
    val_every: int = field(default=100, metadata={"help": "steps between validations"})
    val_pairs: int = field(default=6, metadata={"help": "view pairs per validation subject"})
    init: str = field(default="", metadata={"help": "start from these weights (a .pt file)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and augmentation"})
    workers: int = field(
        default=1, metadata={"help": "processes rendering views ahead (0: in the main one)"}
    )
    synth_from_labels: bool = field(
        default=False,
        metadata={
            "help": "also draw views with random contrasts synthesised from the label maps "
            "(and brain-extracted views); anchors from the labelled anatomy"
        },
    )
    max_minutes: float = field(
        default=0.0,
        metadata={
            "help": "stop (after a last validation) once this wall time has passed; "
            "running again continues (0: no limit)"
        },
    )
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    synth: SynthSettings = field(default_factory=SynthSettings)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}")
        if self.pretrain_steps < 0 or self.steps < 0 or self.pretrain_steps + self.steps < 1:
            raise ValueError("need at least one training step")
        if self.batch_size < 1 or self.val_every < 1 or self.val_pairs < 1:
            raise ValueError("batch_size, val_every and val_pairs must be at least 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if not 0 < self.lambda_min <= self.lambda_max:
            raise ValueError("need 0 < lambda_min <= lambda_max")
        if self.workers < 0:
            raise ValueError("workers must be at least 0")
        if self.levels < 2 or self.width < 1:
            raise ValueError("levels must be at least 2 and width at least 1")
        if self.max_minutes < 0:
            raise ValueError("max_minutes must be at least 0")
        # Fails early with the detector's own message (keypoints, grid size...).
        self.detector_config(3)

    def detector_config(self, ndim: int) -> DetectorConfig:
        """The detector architecture these settings describe."""
        return DetectorConfig(
            ndim=ndim,
            n_keypoints=self.n_keypoints,
            input_size=self.input_size,
            input_mm=self.input_mm,
            channels=tuple(self.width * 2**i for i in range(self.levels)),
            heatmap_level=min(self.heatmap_level, self.levels - 1),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- entry points


def train_from_pairs(
    pairs: Sequence[Mapping[str, Any]] | Sequence[LabelledImage],
    *,
    out: Path,
    settings: KeyMorphTrainSettings,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """``mmreg train keymorph`` entry point: BIDS pair (or labelled image) records -> checkpoint.

    Pairs come from ``--fixed/--moving``; :class:`LabelledImage` records from ``--suffix``.
    """
    data: dict[str, Any]
    if pairs and isinstance(pairs[0], LabelledImage):
        images = [p for p in pairs if isinstance(p, LabelledImage)]
        subjects = subjects_from_images(images)
        data = {
            "images": [str(Path(i.path).name) for i in images],
            "labels": [str(Path(i.dseg).name) for i in images if i.dseg],
        }
    else:
        records = [p for p in pairs if not isinstance(p, LabelledImage)]
        subjects = subjects_from_pairs(records)
        data = pair_data(records)
    return train_keymorph(
        subjects,
        out=out,
        settings=settings,
        device=device,
        progress=progress,
        metadata={"training_data": data},
    )


def load_detector(path: str | Path, *, device: str = "cpu") -> tuple[KeypointDetector, Any]:
    """A detector and its checkpoint from a verified KeyMorph weights file."""
    from mmreg.models import load_checkpoint

    ckpt = load_checkpoint(path, method=FAMILY)
    model = build_detector(ckpt.config["detector"])
    model.load_state_dict(ckpt.state_dict)
    model.to(device).eval()
    return model, ckpt


#: Settings that change how a run goes, not what it learns: a run resumes across them.
_RUN_ONLY = ("max_minutes", "workers")
#: How the views are drawn (recorded beside the engine's :data:`SEED_PROTOCOL`).
VIEW_SEEDING = (
    "views of step i (0-based) from numpy.random.default_rng([seed, i]); "
    "validation views of held-out subject k from numpy.random.default_rng([seed, 7919, k])"
)


def _lr_factor(total: int) -> Any:
    """Linear warm-up, then cosine decay to 5% of the peak (a ``LambdaLR`` factor)."""
    warmup = min(100, max(1, total // 10))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def train_keymorph(
    subjects: Sequence[TrainingSubject],
    *,
    out: str | Path,
    settings: KeyMorphTrainSettings,
    device: str = "cpu",
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Train a keypoint detector and write its checkpoint (the best validation step).

    Args:
        subjects: Training subjects; a ``val_fraction`` of their names (at least one of
            two or more, :func:`mmreg.training.split_items` with the seed) is held out
            for validation (the training subjects are scored when none are).
        out: Checkpoint path (``.pt``); a ``.sha256`` sidecar is written beside it. The
            resumable state ``<out>.state`` is kept until the run has done all its steps.
        settings: Hyperparameters (:class:`KeyMorphTrainSettings`).
        device: ``cpu`` or ``cuda``.
        progress: Show a tqdm progress bar (else log lines).
        metadata: Extra metadata to record (e.g. how the data were made).

    Returns:
        The checkpoint path.

    Raises:
        InputError: For no subjects, unreadable images or mixed dimensionality.
    """
    from mmreg.models import save_checkpoint

    if not subjects:
        raise InputError("no training subject given")
    started = time.perf_counter()
    path = Path(out)
    torch_device = torch.device(device)
    # The initial weights draw from torch's global stream; views have their own (VIEW_SEEDING).
    seed_everything(settings.seed)
    init_model = None
    init_sha = None
    if settings.init:
        init_model, init_ckpt = load_detector(settings.init, device=device)
        init_sha = init_ckpt.sha256
    # By name: the images of one subject never end up on both sides.
    train_names, val_names = split_items(
        [s.name for s in subjects], settings.val_fraction, settings.seed
    )
    held_out = set(val_names)
    prepared = [
        prepare_source(s, settings=settings, anchor_model=init_model, device=torch_device)
        for s in subjects
    ]
    if settings.synth_from_labels:
        n_labelled = sum(p.classes is not None for p in prepared)
        if not n_labelled:
            raise InputError(
                "--synth-from-labels needs label maps: no training subject has one "
                "(ground truth ..._space-<suffix>_dseg.nii.gz)"
            )
        LOG.info(
            "contrasts synthesised from the labels of %d of %d subjects", n_labelled, len(prepared)
        )
    ndims = {p.ndim for p in prepared}
    if len(ndims) != 1:
        raise InputError("training subjects mix 2D and 3D images")
    ndim = ndims.pop()
    # In name order: the run depends on the set of subjects, not on how they were listed
    # (and a resumed run's sources are those its state file was written with).
    ranked = sorted(prepared, key=lambda p: p.name)
    sources = [p for p in ranked if p.name not in held_out]
    val_sources = [p for p in ranked if p.name in held_out] or sources
    config = settings.detector_config(ndim)
    if init_model is not None:
        if init_model.config.ndim != ndim:
            raise InputError(f"--init model is {init_model.config.ndim}D, the data {ndim}D")
        config = init_model.config
        model = copy.deepcopy(init_model).train()
    else:
        model = build_detector(config).to(torch_device)
    total = settings.pretrain_steps + settings.steps
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _lr_factor(total))
    anchors = torch.stack([torch.as_tensor(p.anchors) for p in sources]).float().to(torch_device)
    stream = BatchStream(BatchMaker(sources, settings), total, settings.workers)

    def train_step(step: int) -> dict[str, float]:
        index = step - 1  # the engine counts from 1, the views from 0
        terms = loss_terms(model, stream(index), anchors, settings)
        loss = total_loss(terms, anchor_weight(index, total, settings), settings)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}

    def validate() -> dict[str, float]:
        return validation_scores(model, val_sources, settings, torch_device)

    fingerprint = {
        "settings": {k: v for k, v in asdict(settings).items() if k not in _RUN_ONLY},
        "train": train_names,
        "val": val_names,
        "init_sha256": init_sha,
        "device": str(device),
    }
    state_path = path.with_name(path.name + ".state")
    with stream:
        best = fit(
            model,
            optimiser,
            train_step,
            validate,
            steps=total,
            validate_every=settings.val_every,
            progress=progress,
            state_path=state_path,
            fingerprint=fingerprint,
            scheduler=scheduler,
            log=LOG,
            desc=FAMILY,
            time_limit_s=60.0 * settings.max_minutes if settings.max_minutes > 0 else None,
        )
    stopped_at = int(best.history[-1]["epoch"])
    summary = best.summary(
        device=str(device),
        settings=settings,
        subjects=[p.name for p in sources],
        validation_subjects=[p.name for p in ranked if p.name in held_out],
        anchors=sorted({p.anchor_kind for p in prepared}),
        torch_threads=torch.get_num_threads(),
        best_step=best.epoch,
        stopped_at_step=stopped_at,
        steps=total,
        best_val_score_mm=-best.score,
        init_sha256=init_sha,
        seed=settings.seed,
        seed_protocol=SEED_PROTOCOL,
        view_seeding=VIEW_SEEDING,
        torch_version=str(torch.__version__),
        python_version=platform.python_version(),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    save_checkpoint(
        path,
        method=FAMILY,
        config={"detector": config.to_dict(), "spacing_mm": settings.spacing_mm},
        state_dict=best.state,
        metadata={**dict(metadata or {}), "training": summary},
    )
    if stopped_at >= total:
        state_path.unlink(missing_ok=True)
    else:
        LOG.info(
            "stopped at step %d of %d: run again to continue from %s",
            stopped_at,
            total,
            state_path,
        )
    return path
