"""Training subjects: where they come from, and how training prepares them.

A :class:`TrainingSubject` is a set of images of one subject in one world space (its
modalities already co-registered, or resampled into the first image's space with a
known transform), with optional labels and landmarks. They come from

* :func:`phantom_subjects`: brain phantoms (three contrasts, labels, landmarks);
* :func:`subjects_from_pairs`: ``mmreg train`` pair records, the moving images
  resampled into the fixed one's world with the ground truth's transform
  (:func:`truth_transform`) where it is known;
* :func:`subjects_from_images`: single labelled images (``--suffix``).

:func:`prepare_source` turns one into a :class:`Source`: preprocessed, antialiased
tensors on one grid, with its anchors (:mod:`mmreg.methods.keymorph.anchors`).

Example:
    >>> import numpy as np
    >>> from mmreg.imaging.image import Image
    >>> from mmreg.methods.keymorph.train import KeyMorphTrainSettings
    >>> yy, xx = np.mgrid[:40, :40]
    >>> blob = ((yy - 20) ** 2 / 150 + (xx - 18) ** 2 / 90 < 1).astype(np.float32)
    >>> subject = TrainingSubject("s0", {"T1w": Image(blob, np.diag([2.0, 2.0, 1.0, 1.0]))})
    >>> settings = KeyMorphTrainSettings(n_keypoints=4, input_size=16, input_mm=96.0)
    >>> source = prepare_source(subject, settings=settings)
    >>> source.anchor_kind, source.anchors.shape
    ('foreground-kmeans', (4, 2))
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from mmreg.errors import InputError
from mmreg.imaging.image import Grid, Image, load_image, load_labels, load_spatial
from mmreg.imaging.preprocess import PreprocessOptions, foreground_mask, preprocess
from mmreg.imaging.transform import Transform
from mmreg.methods.keymorph.anchors import kmeans, landmark_anchors, model_anchors
from mmreg.methods.keymorph.model import KeypointDetector
from mmreg.methods.keymorph.sampling import antialias
from mmreg.methods.keymorph.synth import class_map
from mmreg.records import LabelledImage

if TYPE_CHECKING:  # the settings live with the loop, which imports this module
    from mmreg.methods.keymorph.train import KeyMorphTrainSettings

__all__ = [
    "Source",
    "TrainingSubject",
    "pair_data",
    "phantom_subjects",
    "prepare_source",
    "read_landmarks",
    "subjects_from_images",
    "subjects_from_pairs",
    "truth_transform",
]


@dataclass(frozen=True)
class TrainingSubject:
    """The images of one subject in ONE world space, with optional labels and landmarks.

    Attributes:
        name: An identifier (recorded in the checkpoint metadata; the train/validation
            split is by name).
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


@dataclass(frozen=True)
class Source:
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


# --------------------------------------------------------------------------- preparation


def _as_image(item: Image | str | Path, *, labels: bool = False) -> Image:
    if isinstance(item, Image):
        return item
    return load_labels(item) if labels else load_image(item)


def _plane_affine(image: Image) -> npt.NDArray[np.float64]:
    """Training-space affine: world RAS for 3D; scaled voxel axes for 2D (in-plane mm)."""
    if image.ndim == 3:
        return image.affine.copy()
    return np.diag([*image.spacing, 1.0])


def _world(index: np.ndarray, affine: np.ndarray) -> npt.NDArray[np.float64]:
    return index.astype(np.float64) @ affine[:-1, :-1].T + affine[:-1, -1]


def prepare_source(
    subject: TrainingSubject,
    *,
    settings: KeyMorphTrainSettings,
    anchor_model: KeypointDetector | None = None,
    device: torch.device | str = "cpu",
) -> Source:
    """Preprocess a subject's images onto its first image's grid and place its anchors.

    Raises:
        InputError: For no image, or images of mixed dimensionality.
    """
    if not subject.images:
        raise InputError(f"training subject {subject.name} has no image")
    device = torch.device(device)
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
    anchors = landmark_anchors(subject.landmarks, n) if first.ndim == 3 else None
    kind = "template-landmarks"
    if anchors is None and brain is not None and bool(brain.any()):
        # The labelled anatomy is what brain-extracted and whole-head views share.
        anchors = kmeans(_world(np.argwhere(brain.cpu().numpy() > 0), affine), n)
        kind = "label-kmeans"
    if anchors is None and anchor_model is not None:
        spacing = settings.input_mm / settings.input_size
        anchors = model_anchors(
            anchor_model, first, affine, size=settings.input_size, spacing=spacing, device=device
        )
        kind = "initial-model"
    if anchors is None:
        # Nothing ties the subject to a template: spread them over its foreground.
        anchors = kmeans(_world(np.argwhere(foreground_mask(first)), affine), n)
        kind = "foreground-kmeans"
    return Source(
        subject.name, images, modalities, affine, labels, anchors, kind, classes, reference, brain
    )


# --------------------------------------------------------------------------- phantoms


def phantom_subjects(seeds: Sequence[int], **generator_options: Any) -> list[TrainingSubject]:
    """Brain-phantom subjects (T1w, T2w and PDw in the T1w's world, labels, landmarks).

    The T2w/PDw scans are resampled onto the T1w grid with the generator's true
    transform, so all three contrasts share one world.
    """
    from mmreg.imaging.phantoms.brain import generate_brain_subject

    out = []
    for seed in seeds:
        s = generate_brain_subject(int(seed), **generator_options)
        truth = phantom_truth(s.displacement_grid, s.displacement, s.pose)
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


def phantom_truth(grid: Grid, vectors: np.ndarray, pose: np.ndarray) -> Transform:
    """``y = pose @ (x + d(x))`` as a Transform (fixed -> moving)."""
    return Transform.from_field(grid, vectors).then(Transform.from_affine(pose))


# --------------------------------------------------------------------------- BIDS records


def read_landmarks(path: str | Path | None) -> dict[str, list[float]] | None:
    """Named points of a ``name x y z`` TSV (``None`` when there is no such file)."""
    if not path or not Path(path).is_file():
        return None
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    try:
        return {r["name"]: [float(r["x"]), float(r["y"]), float(r["z"])] for r in rows}
    except (KeyError, ValueError) as exc:
        raise InputError(f"cannot read landmarks {Path(path).name}: {exc}") from exc


def truth_transform(pair: Mapping[str, Any]) -> Transform | None:
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
            meta = json.loads(js.read_text())
            pose = np.asarray(meta["Pose"], dtype=np.float64)
            field_img = load_spatial(folder / meta["DisplacementField"])
            vectors = np.asarray(field_img.dataobj, dtype=np.float64)
            grid = Grid(vectors.shape[:3], np.asarray(field_img.affine, dtype=np.float64))
            return phantom_truth(grid, vectors, pose)
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
            truth = truth_transform(pair)
            if truth is None:
                subjects.append(
                    TrainingSubject(
                        name=f"{name}_{pair['moving_label']}",
                        images={str(pair["moving_label"]): pair["moving"]},
                        labels=pair.get("moving_dseg"),
                        landmarks=read_landmarks(pair.get("moving_landmarks")),
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
                landmarks=read_landmarks(first.get("fixed_landmarks")),
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
        header = load_spatial(item.path).header
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
                landmarks=read_landmarks(labelled.landmarks if labelled else first.landmarks),
            )
        )
    return subjects


def pair_data(pairs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
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
