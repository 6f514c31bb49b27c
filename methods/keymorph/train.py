"""Training the KeyMorph keypoint detector.

A training *subject* is a set of images of one subject in one world space (its
modalities already co-registered, or resampled into the first image's space with
a known transform), with optional labels and landmarks. Every step draws pairs of
random views (:mod:`mmreg.methods.keymorph.augment`) and runs the detector on
both. The losses, by training phase:

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

Transforms for the image and label losses are the least-squares affine or a
thin-plate spline with ``lambda`` drawn log-uniformly (``fit``). A held-out set of
subjects is scored every ``val_every`` steps by the error of the affine fitted to
the keypoints of fixed random view pairs (mean over brain points, mm); the best
weights are kept and written with :func:`mmreg.models.save_checkpoint`.

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
import csv
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import torch

from mmreg.errors import InputError
from mmreg.imaging.image import Grid, Image, load_image, load_labels
from mmreg.imaging.preprocess import PreprocessOptions, foreground_mask, preprocess
from mmreg.imaging.transform import Transform
from mmreg.methods.keymorph.augment import (
    AugmentSettings,
    View,
    random_lut,
    random_view,
    render_view,
    sample_view,
)
from mmreg.methods.keymorph.losses import (
    keypoint_distance,
    mse_loss,
    one_hot,
    soft_dice_loss,
    warp_volume,
)
from mmreg.methods.keymorph.model import DetectorConfig, KeypointDetector, build_detector
from mmreg.methods.keymorph.sampling import antialias, normalize_input
from mmreg.methods.keymorph.solvers import fit_affine, fit_tps
from mmreg.methods.keymorph.synth import SynthSettings, class_map, skull_strip, synth_intensity
from mmreg.records import LabelledImage

__all__ = [
    "FAMILY",
    "KeyMorphTrainSettings",
    "TrainingSubject",
    "load_detector",
    "phantom_subjects",
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
        metadata={"help": "stop at the first validation after this wall time (0: no limit)"},
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


@dataclass
class TrainingSubject:
    """The images of one subject in ONE world space, with optional labels and landmarks.

    Attributes:
        name: An identifier (recorded in the checkpoint metadata).
        images: Modality -> image (or NIfTI path); all in the same world space
            (e.g. a T2w resampled onto the T1w with the known transform).
        labels: Integer label map (or path) in that world space, for the
            supervised variant.
        landmarks: Named world points (RAS mm); names of
            :data:`mmreg.imaging.phantoms.brain.MNI_LANDMARKS` place the template
            anchor points in the subject (3D).
    """

    name: str
    images: Mapping[str, Image | str | Path]
    labels: Image | str | Path | None = None
    landmarks: Mapping[str, Sequence[float]] | None = None


@dataclass
class _Source:
    """A prepared subject: antialiased tensors on one grid, anchors and centre."""

    name: str
    images: list[torch.Tensor]
    modalities: list[str]
    affine: npt.NDArray[np.float64]  # (d+1, d+1) voxel -> world of this training space
    labels: torch.Tensor | None
    anchors: npt.NDArray[np.float64]  # (N, d)
    anchor_kind: str
    # Synthesis from labels (None without --synth-from-labels or labels).
    classes: torch.Tensor | None = None  # (*S) int64, see synth.class_map
    reference: torch.Tensor | None = None  # (C,) reference intensity per class
    brain: torch.Tensor | None = None  # (*S) float, labelled anatomy

    @property
    def ndim(self) -> int:
        return self.affine.shape[0] - 1

    @property
    def center(self) -> npt.NDArray[np.float64]:
        return self.anchors.mean(0)


# --------------------------------------------------------------------------- anchors


def _farthest_points(points: np.ndarray, k: int) -> np.ndarray:
    """Deterministic farthest-point sampling (starting from the point nearest the mean)."""
    chosen = [int(np.argmin(((points - points.mean(0)) ** 2).sum(1)))]
    dist = ((points - points[chosen[0]]) ** 2).sum(1)
    for _ in range(k - 1):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, ((points - points[chosen[-1]]) ** 2).sum(1))
    return points[chosen]


def _kmeans(points: np.ndarray, k: int, *, iterations: int = 15) -> np.ndarray:
    """Lloyd's k-means from farthest-point seeds: evenly spread region centres."""
    sub = points[:: max(1, len(points) // 40_000)]
    centres = _farthest_points(sub, k)
    for _ in range(iterations):
        d2 = (sub**2).sum(1)[:, None] - 2 * sub @ centres.T + (centres**2).sum(1)[None]
        assign = np.argmin(d2, axis=1)
        for j in range(k):
            members = sub[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres


_TEMPLATE_CACHE: dict[int, np.ndarray] = {}


def template_points(n: int) -> npt.NDArray[np.float64]:
    """``n`` points spread over the brain of the shipped MNI template (RAS mm), cached.

    k-means centres of the template's grey + white matter: the pretraining targets
    of brain models, in MNI space.
    """
    if n not in _TEMPLATE_CACHE:
        from mmreg.imaging.phantoms.brain import load_template

        tpl = load_template()
        brain = (tpl.tissues[1] + tpl.tissues[2]) > 0.5
        world = tpl.grid.voxel_to_world(np.argwhere(brain))
        _TEMPLATE_CACHE[n] = _kmeans(world, n)
    return _TEMPLATE_CACHE[n].copy()


def _landmark_anchors(
    landmarks: Mapping[str, Sequence[float]] | None, n: int
) -> npt.NDArray[np.float64] | None:
    """Template points mapped into the subject by an affine fitted to named landmarks."""
    if not landmarks:
        return None
    from mmreg.imaging.phantoms.brain import MNI_LANDMARKS

    names = [k for k in MNI_LANDMARKS if k in landmarks]
    if len(names) < 6:
        return None
    mni = np.array([MNI_LANDMARKS[k] for k in names], dtype=np.float64)
    subj = np.array([np.asarray(landmarks[k], dtype=np.float64)[:3] for k in names])
    design = np.concatenate([mni, np.ones((len(names), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, subj, rcond=None)  # subj = [mni, 1] @ coef
    pts = template_points(n)
    return np.concatenate([pts, np.ones((n, 1))], axis=1) @ coef


def _foreground_anchors(world: np.ndarray, n: int) -> npt.NDArray[np.float64]:
    """k-means centres of the foreground: anchors when nothing ties a subject to a template."""
    return _kmeans(world, n)


# --------------------------------------------------------------------------- data


def _as_image(item: Image | str | Path, *, labels: bool = False) -> Image:
    if isinstance(item, Image):
        return item
    return load_labels(item) if labels else load_image(item)


def _plane_affine(image: Image) -> npt.NDArray[np.float64]:
    """Training-space affine: world RAS for 3D; scaled voxel axes for 2D (in-plane mm)."""
    if image.ndim == 3:
        return image.affine.copy()
    return np.diag([*image.spacing, 1.0])


def _prepare_source(
    subject: TrainingSubject,
    *,
    settings: KeyMorphTrainSettings,
    anchor_model: KeypointDetector | None,
    device: torch.device,
) -> _Source:
    if not subject.images:
        raise InputError(f"training subject {subject.name} has no image")
    options = PreprocessOptions(spacing=settings.spacing_mm, prealign="none")
    modalities = list(subject.images)
    first = preprocess(_as_image(subject.images[modalities[0]]), options)
    grid = first.grid
    pre = [first]
    for mod in modalities[1:]:
        img = preprocess(_as_image(subject.images[mod]), options)
        if img.ndim != first.ndim:
            raise InputError(f"training subject {subject.name}: {mod} is {img.ndim}D")
        # Already in the subject's world: only the grid changes.
        pre.append(Transform.identity(first.ndim).apply(img, grid))
    factor = (settings.input_mm / settings.input_size) / float(np.mean(first.spacing))
    images = [torch.from_numpy(antialias(p.data, factor)).to(device) for p in pre]
    labels = None
    if subject.labels is not None:
        lab = _as_image(subject.labels, labels=True)
        lab = Transform.identity(first.ndim).apply(lab, grid, interpolation="nearest")
        labels = torch.from_numpy(np.asarray(lab.data, dtype=np.int64)).to(device)
    affine = _plane_affine(first)
    n = settings.n_keypoints
    classes = reference = brain = None
    if settings.synth_from_labels and labels is not None:
        cls, ref = class_map(
            images[0].cpu().numpy(), labels.cpu().numpy(), n_head=settings.synth.head_classes
        )
        classes = torch.from_numpy(cls).to(device)
        reference = torch.from_numpy(ref).to(device)
        brain = (labels > 0).float()
    anchors = _landmark_anchors(subject.landmarks, n) if first.ndim == 3 else None
    kind = "template-landmarks"
    if anchors is None and brain is not None and bool(brain.any()):
        # The labelled anatomy is what brain-extracted and whole-head views share.
        idx = np.argwhere(brain.cpu().numpy() > 0).astype(np.float64)
        anchors = _foreground_anchors(idx @ affine[:-1, :-1].T + affine[:-1, -1], n)
        kind = "label-kmeans"
    if anchors is None and anchor_model is not None:
        anchors = _model_anchors(anchor_model, first, affine, settings, device)
        kind = "initial-model"
    if anchors is None:
        mask = foreground_mask(first)
        idx = np.argwhere(mask).astype(np.float64)
        world = idx @ affine[:-1, :-1].T + affine[:-1, -1]
        anchors = _foreground_anchors(world, n)
        kind = "foreground-kmeans"
    return _Source(
        subject.name, images, modalities, affine, labels, anchors, kind, classes, reference, brain
    )


@torch.no_grad()
def _model_anchors(
    model: KeypointDetector,
    image: Image,
    affine: np.ndarray,
    settings: KeyMorphTrainSettings,
    device: torch.device,
) -> npt.NDArray[np.float64]:
    """The initial model's keypoints on the upright image (fine-tuning keeps their identity)."""
    nd = image.ndim
    mask = foreground_mask(image)
    centre_idx = np.argwhere(mask).mean(0)
    centre = centre_idx @ affine[:-1, :-1].T + affine[:-1, -1]
    view = View(centre, np.eye(nd), settings.input_size, settings.input_mm / settings.input_size)
    factor = view.spacing / float(np.mean(image.spacing))
    data = torch.from_numpy(antialias(image.data, factor)).to(device)
    rng = np.random.default_rng(0)
    for _ in range(2):  # re-centre once on the keypoints (the brain, not the neck)
        x = render_view(data, affine, view, rng, None)
        kp = model(x[None, None].to(device))[0]
        world = view.to_world(kp).cpu().numpy()
        view = View(world.mean(0), view.linear, view.size, view.spacing)
    return world.astype(np.float64)


def phantom_subjects(seeds: Sequence[int], **generator_options: Any) -> list[TrainingSubject]:
    """Brain-phantom subjects (T1w, T2w and PDw in the T1w's world, labels, landmarks).

    The T2w/PDw scans are resampled onto the T1w grid with the generator's true
    transform, so all three contrasts share one world.
    """
    from mmreg.imaging.phantoms.brain import generate_brain_subject

    out = []
    for seed in seeds:
        s = generate_brain_subject(int(seed), **generator_options)
        truth = _phantom_truth(s.displacement_grid, s.displacement, s.pose)
        images: dict[str, Image] = {"T1w": s.t1w}
        for mod in ("T2w", "PDw"):
            images[mod] = truth.apply(s.images[mod], s.t1w.grid)
        out.append(
            TrainingSubject(
                name=f"phantom-{int(seed)}",
                images=images,
                labels=s.labels_fixed,
                landmarks={k: v.tolist() for k, v in s.landmarks_fixed.items()},
            )
        )
    return out


def _phantom_truth(grid: Grid, vectors: np.ndarray, pose: np.ndarray) -> Transform:
    """``y = pose @ (x + d(x))`` as a Transform (fixed -> moving)."""
    return Transform.from_field(grid, vectors).then(Transform.from_affine(pose))


# --------------------------------------------------------------------------- BIDS pairs


def _read_landmarks(path: str | Path | None) -> dict[str, list[float]] | None:
    if not path or not Path(path).is_file():
        return None
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    try:
        return {r["name"]: [float(r["x"]), float(r["y"]), float(r["z"])] for r in rows}
    except (KeyError, ValueError) as exc:
        raise InputError(f"cannot read landmarks {Path(path).name}: {exc}") from exc


def _truth_transform(pair: Mapping[str, Any]) -> Transform | None:
    """The known fixed->moving transform of a pair, if its ground truth has one.

    Looked up next to the pair's label maps (or in ``derivatives/ground-truth``) as
    ``..._from-<fixed>_to-<moving>_desc-truth_xfm.{json,h5,txt}``; the JSON form
    (the demo's) is ``y = Pose @ (x + d(x))`` with ``d`` in the named NIfTI field.
    """
    stem = f"sub-{pair['subject']}"
    if pair.get("session"):
        stem += f"_ses-{pair['session']}"
    stem += f"_from-{pair['fixed_label']}_to-{pair['moving_label']}_desc-truth_xfm"
    folders = [Path(p).parent for p in (pair.get("fixed_dseg"), pair.get("moving_dseg")) if p]
    if pair.get("bids_dir"):
        sub = Path(pair["bids_dir"]) / "derivatives" / "ground-truth" / f"sub-{pair['subject']}"
        if pair.get("session"):
            sub = sub / f"ses-{pair['session']}"
        folders.append(sub / "anat")
    for folder in folders:
        js = folder / f"{stem}.json"
        if js.is_file():
            import nibabel as nib

            meta = json.loads(js.read_text())
            pose = np.asarray(meta["Pose"], dtype=np.float64)
            field_img = nib.load(str(folder / meta["DisplacementField"]))
            vectors = np.asarray(field_img.dataobj, dtype=np.float64)
            grid = Grid(vectors.shape[:3], np.asarray(field_img.affine, dtype=np.float64))
            return _phantom_truth(grid, vectors, pose)
        for suffix in (".h5", ".txt"):
            if (folder / f"{stem}{suffix}").is_file():
                return Transform.read(folder / f"{stem}{suffix}")
    return None


def subjects_from_pairs(pairs: Sequence[Mapping[str, Any]]) -> list[TrainingSubject]:
    """Training subjects from ``mmreg train`` pair records (see :mod:`mmreg.bids_app.train`).

    The pairs of one subject (and session) share the fixed image, which defines the
    subject's world; a moving image with a known true transform in the ground truth
    is resampled into it (so the contrasts can be compared keypoint by keypoint).
    A moving image without one becomes a subject of its own.
    """
    groups: dict[tuple[str, str | None, str], list[Mapping[str, Any]]] = {}
    for pair in pairs:
        key = (str(pair["subject"]), pair.get("session"), str(pair["fixed"]))
        groups.setdefault(key, []).append(pair)
    subjects = []
    for (sub, ses, fixed_path), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        name = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        first = group[0]
        fixed = load_image(fixed_path)
        images: dict[str, Image | str | Path] = {str(first["fixed_label"]): fixed}
        for pair in group:
            truth = _truth_transform(pair)
            if truth is None:
                subjects.append(
                    TrainingSubject(
                        name=f"{name}_{pair['moving_label']}",
                        images={str(pair["moving_label"]): pair["moving"]},
                        labels=pair.get("moving_dseg"),
                        landmarks=_read_landmarks(pair.get("moving_landmarks")),
                    )
                )
                continue
            moving = load_image(pair["moving"])
            images[str(pair["moving_label"])] = truth.apply(moving, fixed.grid)
        subjects.append(
            TrainingSubject(
                name=name,
                images=images,
                labels=first.get("fixed_dseg"),
                landmarks=_read_landmarks(first.get("fixed_landmarks")),
            )
        )
    return subjects


def subjects_from_images(images: Sequence[LabelledImage]) -> list[TrainingSubject]:
    """Training subjects from single labelled images (``mmreg train keymorph --suffix``).

    Images of one subject and session on one grid (co-registered contrasts) form one
    subject, labelled by the first label map among them; others are subjects of their own.
    """
    groups: dict[tuple[Any, ...], list[LabelledImage]] = {}
    for item in images:
        header = nib.load(item.path).header
        grid = (item.subject, item.session, tuple(header.get_data_shape()[:3]))
        key = (*grid, tuple(np.round(header.get_best_affine(), 3).ravel()))
        groups.setdefault(key, []).append(item)
    subjects = []
    for key, group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        first = group[0]
        name = f"sub-{first.subject}" + (f"_ses-{first.session}" if first.session else "")
        if sum(1 for k in groups if k[:2] == key[:2]) > 1:
            name += f"_{first.suffix}"
        labelled = next((i for i in group if i.dseg), None)
        subjects.append(
            TrainingSubject(
                name=name,
                images={i.suffix: i.path for i in group},
                labels=labelled.dseg if labelled else None,
                landmarks=_read_landmarks(labelled.landmarks if labelled else first.landmarks),
            )
        )
    return subjects


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
        data = _pair_data(records)
    return train_keymorph(
        subjects,
        out=out,
        settings=settings,
        device=device,
        progress=progress,
        metadata={"training_data": data},
    )


def _pair_data(pairs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the checkpoint records of BIDS training pairs (datasets, generator seeds)."""
    bids = sorted({str(p.get("bids_dir")) for p in pairs if p.get("bids_dir")})
    data: dict[str, Any] = {"bids_dirs": bids, "n_pairs": len(pairs)}
    # Generated datasets (mmreg's demo) list each subject's generator seed: keep them, so
    # the training data can be told apart from (and regenerated for) any test data.
    seeds = {}
    for folder in bids:
        table = Path(folder) / "participants.tsv"
        if table.is_file():
            with open(table, newline="") as fh:
                for row in csv.DictReader(fh, delimiter="\t"):
                    if row.get("seed"):
                        seeds[row["participant_id"]] = int(row["seed"])
    if seeds:
        data["subject_seeds"] = seeds
    return data


# --------------------------------------------------------------------------- training


def load_detector(path: str | Path, *, device: str = "cpu") -> tuple[KeypointDetector, Any]:
    """A detector and its checkpoint from a verified KeyMorph weights file."""
    from mmreg.models import load_checkpoint

    ckpt = load_checkpoint(path, method=FAMILY)
    model = build_detector(ckpt.config["detector"])
    model.load_state_dict(ckpt.state_dict)
    model.to(device).eval()
    return model, ckpt


def _normalized(points: torch.Tensor, size: int) -> torch.Tensor:
    """Grid voxel coordinates -> ``[-1, 1]`` (the TPS lambda's units)."""
    return 2.0 * points / (size - 1) - 1.0


def _grid_normalized(size: int, ndim: int, device: torch.device) -> torch.Tensor:
    axes = [torch.linspace(-1.0, 1.0, size, device=device)] * ndim
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, ndim)


@dataclass
class _Batch:
    """One step's inputs: ``x`` holds the a-views then the b-views, ``(2B, 1, *S)``."""

    mode: str
    phase: str
    x: torch.Tensor
    views_a: list[View]
    views_b: list[View]
    subjects_a: list[int]
    subjects_b: list[int]
    labels_a: torch.Tensor | None
    labels_b: torch.Tensor | None
    fit_seed: int


class _Steps(torch.utils.data.IterableDataset):
    """Batches for steps ``start..stop`` (a worker process renders them ahead)."""

    def __init__(self, trainer: _Trainer, start: int, stop: int) -> None:
        super().__init__()
        self.trainer, self.start, self.stop = trainer, start, stop

    def __iter__(self) -> Any:
        for step in range(self.start, self.stop):
            yield self.trainer.make_batch(step)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class _Trainer:
    """State of one training run (sources, model, random streams)."""

    def __init__(
        self,
        sources: list[_Source],
        val_sources: list[_Source],
        settings: KeyMorphTrainSettings,
        model: KeypointDetector,
        device: torch.device,
    ) -> None:
        self.sources = sources
        self.val_sources = val_sources
        self.s = settings
        self.model = model
        self.device = device
        self.ndim = sources[0].ndim
        self.size = settings.input_size
        self.spacing = settings.input_mm / settings.input_size
        self.difficulty = 1.0
        self._anchors = torch.stack([torch.as_tensor(src.anchors) for src in sources]).float()
        # One label set for every one-hot map; supervised steps need labels everywhere.
        with_labels = [src.labels for src in sources if src.labels is not None]
        self.n_classes = (
            int(max(int(lab.max()) for lab in with_labels)) + 1
            if len(with_labels) == len(sources)
            else 0
        )

    # ---- views

    def _view(
        self, src: _Source, rng: np.random.Generator, *, rotation: str | None = None
    ) -> View:
        return random_view(
            rng,
            src.center,
            size=self.size,
            spacing=self.spacing,
            settings=self.s.augment,
            rotation=rotation,
            difficulty=self.difficulty,
        )

    def _render(
        self,
        src: _Source,
        modality: int,
        view: View,
        rng: np.random.Generator,
        augment: AugmentSettings | None,
    ) -> torch.Tensor:
        if augment is None:
            return render_view(src.images[modality], src.affine, view, rng, None)
        synth = self.s.synth
        image = src.images[modality]
        if src.classes is not None and rng.random() < synth.prob:
            assert src.reference is not None
            lut = random_lut(rng, augment)
            image = synth_intensity(src.classes, src.images[0], src.reference, rng, synth, lut)
            # The contrast is drawn already; the label map's edges are sharp.
            augment = replace(augment, lut_prob=0.0, blur_prob=max(augment.blur_prob, 0.6))
        strip = src.brain is not None and rng.random() < synth.skullstrip_prob
        # A brain-extracted scan has no neck or face to paint around it.
        x = render_view(
            image, src.affine, view, rng, augment, centre=None if strip else src.center
        )
        if strip:
            assert src.brain is not None
            brain = sample_view(src.brain[None], src.affine, view)[0]
            x = normalize_input(skull_strip(x, brain, rng))
        return x

    def _labels(self, src: _Source, view: View) -> torch.Tensor:
        assert src.labels is not None
        lab = sample_view(src.labels[None].float(), src.affine, view, mode="nearest")[0]
        return one_hot(lab[None], self.n_classes)[0]

    # ---- losses

    def _world(self, views: Sequence[View], kp: torch.Tensor) -> torch.Tensor:
        return torch.stack([v.to_world(k) for v, k in zip(views, kp, strict=True)])

    def _fit_warp_coords(
        self, kp_a: torch.Tensor, kp_b: torch.Tensor, rng: np.random.Generator
    ) -> torch.Tensor:
        """Grid coordinates (voxels of view b) of every voxel of view a, from the keypoints."""
        a = _normalized(kp_a, self.size)
        b = _normalized(kp_b, self.size)
        grid = _grid_normalized(self.size, self.ndim, a.device).expand(a.shape[0], -1, -1)
        kind = self.s.fit if self.s.fit != "mixed" else ("affine", "tps")[int(rng.integers(2))]
        if kind == "affine":
            m = fit_affine(a, b, ridge=1e-3)
            mapped = (
                grid @ m[:, : self.ndim, : self.ndim].transpose(1, 2)
                + m[:, None, : self.ndim, self.ndim]
            )
        else:
            lo, hi = math.log(self.s.lambda_min), math.log(self.s.lambda_max)
            lam = torch.exp(torch.as_tensor(rng.uniform(lo, hi, a.shape[0])))
            mapped = fit_tps(a, b, lam)(grid).float()
        voxels = (mapped + 1.0) * (self.size - 1) / 2.0
        return voxels.reshape(a.shape[0], *([self.size] * self.ndim), self.ndim)

    def difficulty_at(self, step: int) -> float:
        """Curriculum position of ``step`` (1: full range of rotations and offsets)."""
        if self.s.init:
            return 1.0
        ramp = self.s.curriculum * max(1, self.s.pretrain_steps)
        return min(1.0, step / max(1.0, ramp))

    def phase_at(self, step: int) -> str:
        return "pretrain" if step < self.s.pretrain_steps else self.s.variant

    def make_batch(self, step: int) -> _Batch:
        """The views of one step: a pure function of ``(seed, step)`` (runs in a worker)."""
        s = self.s
        rng = np.random.default_rng([s.seed, step])
        self.difficulty = self.difficulty_at(step)
        phase = self.phase_at(step)
        if phase == "pretrain" or (phase == "unsupervised" and rng.random() < 0.5):
            mode = "consistency"
        elif phase == "unsupervised":
            mode = "mse"
        else:
            mode = "dice"
        if mode == "dice" and self.n_classes < 2:
            mode = "consistency"
        pairs = []
        for _ in range(s.batch_size):
            i = int(rng.integers(len(self.sources)))
            same = mode == "consistency" or len(self.sources) == 1
            if mode == "dice":
                same = same or rng.random() < s.same_subject_prob
            j = i if same else int(rng.choice([k for k in range(len(self.sources)) if k != i]))
            src_a, src_b = self.sources[i], self.sources[j]
            ma = int(rng.integers(len(src_a.images)))
            mb = int(rng.integers(len(src_b.images)))
            if mode == "mse" and src_a.modalities[ma] in src_b.modalities:
                mb = src_b.modalities.index(src_a.modalities[ma])
            # View a is often upright, like a fixed image; view b in any pose.
            va = self._view(src_a, rng, rotation="small" if rng.random() < 0.5 else None)
            vb = self._view(src_b, rng)
            if mode == "mse":
                # Same contrast draw for both images, so intensities are comparable.
                seed = int(rng.integers(2**31))
                xa = self._render(src_a, ma, va, np.random.default_rng(seed), s.augment)
                xb = self._render(src_b, mb, vb, np.random.default_rng(seed), s.augment)
            else:
                xa = self._render(src_a, ma, va, rng, s.augment)
                xb = self._render(src_b, mb, vb, rng, s.augment)
            pairs.append((i, j, va, vb, xa, xb))
        labels_a = labels_b = None
        if mode == "dice":
            labels_a = torch.stack([self._labels(self.sources[p[0]], p[2]) for p in pairs])
            labels_b = torch.stack([self._labels(self.sources[p[1]], p[3]) for p in pairs])
        return _Batch(
            mode=mode,
            phase=phase,
            x=torch.stack([p[4] for p in pairs] + [p[5] for p in pairs])[:, None],
            views_a=[p[2] for p in pairs],
            views_b=[p[3] for p in pairs],
            subjects_a=[p[0] for p in pairs],
            subjects_b=[p[1] for p in pairs],
            labels_a=labels_a,
            labels_b=labels_b,
            fit_seed=int(rng.integers(2**31)),
        )

    def losses(self, batch: _Batch) -> dict[str, torch.Tensor]:
        """Run the detector on a batch and return the loss terms."""
        b = len(batch.views_a)
        x = batch.x.to(self.device)
        kp = self.model(x)
        kp_a, kp_b = kp[:b], kp[b:]
        wa = self._world(batch.views_a, kp_a)
        wb = self._world(batch.views_b, kp_b)
        same = torch.tensor(
            [i == j for i, j in zip(batch.subjects_a, batch.subjects_b, strict=True)],
            device=self.device,
        )
        terms: dict[str, torch.Tensor] = {}
        if same.any():
            terms["consistency"] = keypoint_distance(wa[same], wb[same])
        else:
            terms["consistency"] = kp.sum() * 0.0
        anchors_a = self._anchors[batch.subjects_a].to(wa)
        anchors_b = self._anchors[batch.subjects_b].to(wb)
        terms["anchor"] = 0.5 * (
            keypoint_distance(wa, anchors_a) + keypoint_distance(wb, anchors_b)
        )
        if batch.mode in ("dice", "mse"):
            coords = self._fit_warp_coords(kp_a, kp_b, np.random.default_rng(batch.fit_seed))
            if batch.mode == "dice":
                assert batch.labels_a is not None and batch.labels_b is not None
                warped = warp_volume(batch.labels_b.to(self.device), coords)
                terms["dice"] = soft_dice_loss(warped, batch.labels_a.to(self.device))
            else:
                xa = x[:b]
                warped = warp_volume(x[b:], coords)
                terms["mse"] = mse_loss(warped, xa, (xa > 0.05) | (warped > 0.05))
        return terms

    # ---- validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Affine-fit errors (mm, mean over anchor points) on fixed random view pairs.

        ``val_affine_error_mm``: an upright view against a view rotated by up to
        ``large_rotation_deg`` (the pose after the test-time rotation search);
        ``val_upright_error_mm``: two near-upright
        views (where test-time refinement brings the images); ``val_score_mm``: their
        mean, which selects the checkpoint.
        """
        self.model.eval()
        difficulty, self.difficulty = self.difficulty, 1.0
        errors: dict[str, list[float]] = {"full": [], "upright": []}
        consist = []
        for k, src in enumerate(self.val_sources):
            rng = np.random.default_rng([self.s.seed, 7919, k])
            for _ in range(self.s.val_pairs):
                ma = int(rng.integers(len(src.images)))
                mb = int(rng.integers(len(src.images)))
                views = [
                    self._view(src, rng, rotation="small"),
                    self._view(src, rng, rotation="large"),
                    self._view(src, rng, rotation="small"),
                ]
                xs = [
                    self._render(src, m, v, rng, self.s.augment)
                    for m, v in zip((ma, mb, mb), views, strict=True)
                ]
                kp = self.model(torch.stack(xs)[:, None].to(self.device))
                world = [v.to_world(p) for v, p in zip(views, kp, strict=True)]
                consist.append(float((world[0] - world[1]).norm(dim=-1).mean()))
                pts = torch.as_tensor(src.anchors, dtype=torch.float64, device=kp.device)
                for name, other in (("full", world[1]), ("upright", world[2])):
                    m = fit_affine(world[0][None].double(), other[None].double())[0]
                    mapped = pts @ m[: self.ndim, : self.ndim].T + m[: self.ndim, self.ndim]
                    errors[name].append(float((mapped - pts).norm(dim=-1).mean()))
        self.model.train()
        self.difficulty = difficulty
        full, upright = float(np.mean(errors["full"])), float(np.mean(errors["upright"]))
        return {
            "val_affine_error_mm": full,
            "val_affine_error_median_mm": float(np.median(errors["full"])),
            "val_upright_error_mm": upright,
            "val_keypoint_error_mm": float(np.mean(consist)),
            "val_score_mm": 0.5 * (full + upright),
        }


def _split(
    subjects: Sequence[TrainingSubject], fraction: float
) -> tuple[list[TrainingSubject], list[TrainingSubject]]:
    n = len(subjects)
    n_val = 0 if fraction <= 0 or n < 2 else min(n - 1, max(1, round(n * fraction)))
    return list(subjects[: n - n_val]), list(subjects[n - n_val :])


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
        subjects: Training subjects; the last ``val_fraction`` of them are held out
            for validation (the training subjects are scored when none are).
        out: Checkpoint path (``.pt``); a ``.sha256`` sidecar is written beside it.
        settings: Hyperparameters (:class:`KeyMorphTrainSettings`).
        device: ``cpu`` or ``cuda``.
        progress: Show a tqdm progress bar.
        metadata: Extra metadata to record (e.g. how the data were made).

    Returns:
        The checkpoint path.

    Raises:
        InputError: For no subjects, unreadable images or mixed dimensionality.
    """
    from tqdm import tqdm

    from mmreg.models import save_checkpoint

    if not subjects:
        raise InputError("no training subject given")
    start = time.perf_counter()
    torch_device = torch.device(device)
    torch.manual_seed(settings.seed)
    init_model = None
    init_sha = None
    if settings.init:
        init_model, init_ckpt = load_detector(settings.init, device=device)
        init_sha = init_ckpt.sha256
    train_subjects, val_subjects = _split(subjects, settings.val_fraction)
    prepared = [
        _prepare_source(s, settings=settings, anchor_model=init_model, device=torch_device)
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
    sources = prepared[: len(train_subjects)]
    val_sources = prepared[len(train_subjects) :] or sources
    config = settings.detector_config(ndim)
    if init_model is not None:
        if init_model.config.ndim != ndim:
            raise InputError(f"--init model is {init_model.config.ndim}D, the data {ndim}D")
        config = init_model.config
        model = copy.deepcopy(init_model).train()
    else:
        model = build_detector(config).to(torch_device)
    trainer = _Trainer(sources, val_sources, settings, model, torch_device)
    total = settings.pretrain_steps + settings.steps
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    warmup = min(100, max(1, total // 10))

    def lr_at(step: int) -> float:
        # Linear warm-up, then cosine decay to 5% of the peak.
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {
        "score": math.inf,
        "step": 0,
        "state": copy.deepcopy(model.state_dict()),
    }
    bar = tqdm(total=total, desc="keymorph", unit="step", disable=not progress)
    stopped_at = total
    running: dict[str, float] = {}
    model.train()
    # Views are rendered in a worker process while the model trains on the previous batch.
    loader = torch.utils.data.DataLoader(
        _Steps(trainer, 0, total),
        batch_size=None,
        num_workers=settings.workers,
        worker_init_fn=_worker_init if settings.workers else None,
        prefetch_factor=2 if settings.workers else None,
        multiprocessing_context="fork" if settings.workers else None,
    )
    for step, batch in enumerate(loader):
        frac = step / max(1, total - 1)
        anchor_w = settings.anchor_weight * (
            settings.anchor_final
            + (1 - settings.anchor_final) * 0.5 * (1 + math.cos(math.pi * frac))
        )
        terms = trainer.losses(batch)
        loss = settings.consistency_weight * terms["consistency"] + anchor_w * terms["anchor"]
        if "dice" in terms:
            loss = loss + settings.dice_weight * terms["dice"]
        if "mse" in terms:
            loss = loss + settings.mse_weight * terms["mse"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()
        scheduler.step()
        bar.update(1)
        for name, value in {"loss": loss, **terms}.items():
            v = float(value.detach())
            running[name] = 0.9 * running.get(name, v) + 0.1 * v
        if (step + 1) % settings.val_every == 0 or step + 1 == total:
            record = {
                "step": step + 1,
                "phase": batch.phase,
                "elapsed_s": round(time.perf_counter() - start, 1),
                **running,
                **trainer.validate(),
            }
            history.append(record)
            LOG.info("step %d: %s", step + 1, json.dumps(record))
            score = record["val_score_mm"]
            if score < best["score"]:
                best = {
                    "score": score,
                    "step": step + 1,
                    "state": copy.deepcopy(model.state_dict()),
                }
            bar.set_postfix(
                loss=f"{running['loss']:.2f}", val_mm=f"{score:.2f}", best=f"{best['score']:.2f}"
            )
            if settings.max_minutes and record["elapsed_s"] > 60.0 * settings.max_minutes:
                LOG.info("stopping at step %d: --max-minutes %g", step + 1, settings.max_minutes)
                stopped_at = step + 1
                break
    bar.close()
    wall = time.perf_counter() - start
    train_meta = {
        "settings": settings.to_dict(),
        "subjects": [s.name for s in train_subjects],
        "validation_subjects": [s.name for s in val_subjects],
        "anchors": sorted({p.anchor_kind for p in prepared}),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "wall_time_s": round(wall, 1),
        "best_step": best["step"],
        "stopped_at_step": stopped_at,
        "best_val_score_mm": best["score"],
        "history": history,
        "init_sha256": init_sha,
    }
    path = Path(out)
    save_checkpoint(
        path,
        method=FAMILY,
        config={"detector": config.to_dict(), "spacing_mm": settings.spacing_mm},
        state_dict=best["state"],
        metadata={**dict(metadata or {}), "training": train_meta},
    )
    return path
