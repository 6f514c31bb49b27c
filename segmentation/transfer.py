"""Annotation transfer: move a DXA's label map onto the MR mid-coronal slice by registration.

Windsor et al. (2021) label MR scans without annotating any: each subject's DXA, which
carries bone labels, is registered to the MR slice, and its labels are warped onto the
slice; a U-Net trained on these labels then segments MR slices of new subjects alone
(:mod:`~mmreg.segmentation.unet_transfer`).

A method's transform maps *fixed* points to *moving* points (the ITK convention), so
labels of the moving image are pulled onto the fixed grid directly, while labels of the
fixed image (the DXA, the usual fixed side) need the inverse map on the moving grid
(:func:`inverse_transform`: exact for linear transforms, fixed-point iterations for
displacement fields).

Registration sees exactly what the participant level registers
(:func:`mmreg.pipeline.load_pair`: the Dixon MR becomes its spine-following mid-coronal
slice; both sides carry their channel siblings, bone + tissue and fat + water, whose
normalised mean is the scalar image classical methods read). For the network the MR is
kept as a multi-channel slice on a canonical grid (:class:`MRSlice`: fat and water, in
that order), so every subject gives it the same channels in the same layout.

Example (labels of a fixed image moved 10 mm in x, onto the moving grid):
    >>> import numpy as np
    >>> from mmreg.imaging.image import Image
    >>> labels = np.zeros((20, 20), np.int32); labels[5:10, 5:10] = 1
    >>> shift = np.eye(4); shift[0, 3] = 10.0  # fixed point p sits at p + 10 mm in moving
    >>> moved = transfer_labels(Image(labels), Transform.from_affine(shift, ndim=2),
    ...                         Image(labels).grid, source="fixed")
    >>> int(np.argwhere(moved.data == 1)[:, 0].min())
    15
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from mmreg.errors import InputError
from mmreg.imaging.groundtruth import read_label_names
from mmreg.imaging.image import Grid, Image, load_image, load_labels, load_spatial
from mmreg.imaging.planar import DIXON_ROLES, PlanarPair, dixon_channels
from mmreg.imaging.preprocess import PreprocessOptions, reorient_canonical
from mmreg.imaging.slice_synthesis import (
    CoronalSlice,
    SpineNotFoundWarning,
    synthesize_coronal_slice,
)
from mmreg.imaging.transform import AffineStep, Transform
from mmreg.pipeline import load_pair, prepare_loaded, register
from mmreg.typing import PathLike

__all__ = [
    "MRSlice",
    "TransferredSubject",
    "footprint_truth",
    "inverse_transform",
    "label_table",
    "load_mr_slice",
    "mr_side",
    "mr_slice",
    "register_planar",
    "slice_truth",
    "subject_id",
    "transfer_labels",
    "transfer_subject",
    "truth_path",
]

LOG = logging.getLogger("mmreg.segmentation.transfer")

#: BIDS ``space`` label of the synthesised MR slice in the ground-truth dataset.
SLICE_SPACE = "midcoronal"
#: Which structure a whole-body DXA label shows where projections overlap, first on top:
#: the spine over everything; the pelvic inlet over the sacrum behind it (and the pelvis).
PROJECTION_ORDER = ("spine", "pelvic_cavity", "pelvis")


# --- geometry ----------------------------------------------------------------------------------


def inverse_transform(
    transform: Transform, grid: Grid, *, iterations: int = 50, tol_mm: float = 1e-3
) -> Transform:
    """The inverse map of ``transform``, valid on ``grid`` (moving -> fixed points).

    Linear transforms are inverted exactly. With displacement fields, ``T(x) = y`` is
    solved for every point ``y`` of ``grid`` by ``x <- x + L^-1 (y - T(x))``, ``L`` the
    product of the linear steps (so rotations converge as fast as shifts), and the result
    is a displacement field on ``grid``.

    Example:
        >>> shift = np.eye(4); shift[1, 3] = -4.0
        >>> inv = inverse_transform(Transform.from_affine(shift, ndim=2), Grid((4, 4), np.eye(4)))
        >>> inv.map_points([[0.0, 0.0, 0.0]]).tolist()
        [[0.0, 4.0, 0.0]]
    """
    if transform.is_linear:
        return Transform.from_affine(np.linalg.inv(transform.as_affine()), ndim=transform.ndim)
    linear = np.eye(4)
    for step in transform.steps:
        if isinstance(step, AffineStep):
            linear = step.matrix @ linear
    back = np.linalg.inv(linear)[:3, :3]
    y = grid.world_coordinates().reshape(-1, 3)
    x = (np.c_[y, np.ones(len(y))] @ np.linalg.inv(linear).T)[:, :3]
    for _ in range(iterations):
        residual = y - transform.map_points(x)
        x = x + residual @ back.T
        if float(np.abs(residual).max()) < tol_mm:
            break
    else:
        LOG.debug("inverse transform: residual %.3g mm after %d steps", residual.max(), iterations)
    return Transform.from_field(grid, (x - y).reshape(*grid.shape, 3))


def transfer_labels(
    labels: Image,
    transform: Transform,
    target: Grid,
    *,
    source: Literal["fixed", "moving"] = "fixed",
) -> Image:
    """Warp a label map of one image of a registered pair onto the other image's grid.

    Args:
        labels: Integer labels on the grid of the ``source`` image.
        transform: The registration result, fixed -> moving points.
        target: The grid of the other image.
        source: Which image of the pair the labels belong to.

    Returns:
        Labels (int32) on ``target``; points mapped outside ``labels`` get 0.
    """
    if source not in ("fixed", "moving"):
        raise ValueError(f"source must be 'fixed' or 'moving', got {source!r}")
    pull = transform if source == "moving" else inverse_transform(transform, target)
    return pull.apply(labels, target, interpolation="nearest", fill=0)


# --- the MR side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MRSlice:
    """The MR image of a pair as a 2D multi-channel image on a canonical grid.

    Attributes:
        channels: Intensities ``(C, X, Y)`` (raw; the U-Net normalises them).
        grid: Their 2D grid, axes ordered and signed like RAS (reoriented, not resampled).
        roles: Channel names (``("fat", "water")`` for Dixon, ``("",)`` otherwise).
        registered: Index of the channel of the file the pair named (what is registered).
        coronal: The slice synthesis, when the MR was 3D (to sample 3D label maps).
    """

    channels: npt.NDArray[np.float32]
    grid: Grid
    roles: tuple[str, ...]
    registered: int = 0
    coronal: CoronalSlice | None = None

    def image(self, channel: int | None = None) -> Image:
        """One channel as an :class:`Image` (default: the registered one)."""
        index = self.registered if channel is None else channel
        return Image(self.channels[index], self.grid.affine)


def mr_slice(image: Image, path: PathLike, coronal: CoronalSlice | None = None) -> MRSlice:
    """The :class:`MRSlice` of a 2D MR image that carries its Dixon channels (own first).

    ``image`` is what :func:`mmreg.imaging.planar.make_planar` makes of the MR (its
    :attr:`~mmreg.imaging.image.Image.channels`, or its data for a single channel);
    ``path`` names the file it came from (for the channel roles).
    """
    stack = image.channels if image.channels is not None else image.data[..., None]
    images = [
        reorient_canonical(Image(stack[..., k], image.affine)) for k in range(stack.shape[-1])
    ]
    _, roles = dixon_channels(path)
    order = list(range(len(images)))
    names: tuple[str, ...] = tuple("" for _ in images)
    if roles and len(roles) == len(images):
        # Fat first whichever file the pair named: the network always reads one order.
        order = sorted(order, key=lambda k: DIXON_ROLES.index(roles[k]))
        names = tuple(roles[k] for k in order)
    data = np.stack([images[k].data.astype(np.float32) for k in order])
    return MRSlice(data, images[0].grid, names, registered=order.index(0), coronal=coronal)


def load_mr_slice(path: PathLike) -> MRSlice:
    """Read an MR image (3D Dixon volume or 2D slice) with its Dixon sibling as one slice.

    A 3D image becomes its mid-coronal slice along the spine, synthesised as the
    participant level does (fat and water together when the ``rec-fat``/``rec-water``
    sibling exists). Channels come out as ``(fat, water)`` whichever file ``path`` names.

    Raises:
        InputError: For unreadable images, or Dixon channels on different grids.
    """
    paths, roles = dixon_channels(path)
    first = load_image(paths[0])
    coronal = None
    if first.ndim == 3:
        volumes = [first, *(load_image(p, ndim=3) for p in paths[1:])]
        with warnings.catch_warnings():
            # A missing spine is logged by the synthesis; the flat plane is still usable.
            warnings.simplefilter("ignore", SpineNotFoundWarning)
            coronal = synthesize_coronal_slice(volumes, roles=roles or ("",))
        images = list(coronal.images)
    else:
        images = [first, *(load_image(p, ndim=2) for p in paths[1:])]
    for other in images[1:]:
        if other.shape != images[0].shape or not np.allclose(other.affine, images[0].affine):
            raise InputError(f"{Path(path).name}: its Dixon channels are not on one grid")
    stack = np.stack([im.data for im in images], axis=-1)
    return mr_slice(Image(images[0].data, images[0].affine, channels=stack), path, coronal)


def slice_truth(labels: Image, mr: MRSlice) -> Image:
    """A ground-truth label map of the MR moved onto the slice grid (exact, nearest).

    3D labels are sampled on the slice's surface (as the evaluation of the participant
    level does); 2D labels (e.g. ``space-midcoronal_dseg``) are resampled onto the grid.

    Raises:
        InputError: For 3D labels when the MR was not a 3D volume.
    """
    if labels.ndim == 3:
        if mr.coronal is None:
            raise InputError("3D label map for a 2D MR image")
        labels = mr.coronal.sample(labels, order=0)
    identity = Transform.identity(ndim=2)
    return identity.apply(labels, mr.grid, interpolation="nearest", fill=0)


def label_table(records: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Label names from the ``dseg.tsv`` above the first label map found (or ``{}``)."""
    for record in records:
        for key in ("fixed_dseg", "moving_dseg"):
            if not record.get(key):
                continue
            for folder in list(Path(record[key]).parents)[:5]:
                if (folder / "dseg.tsv").is_file():
                    return read_label_names(folder / "dseg.tsv")
    return {}


def footprint_truth(record: Mapping[str, Any], side: str, mr: MRSlice) -> Image | None:
    """The MR's ground truth as a DXA sees it: the AP projection footprint of its 3D label
    map (:func:`mmreg.imaging.slice_synthesis.project_labels`) on the slice grid.

    A DXA label is the projection of a whole structure (a pelvis label covers the iliac
    wings), while a slice cuts through part of it; comparing labels transferred from a
    DXA with the slice's own cut penalises the transfer for what no projection can know.
    The footprint is the same kind of object as the DXA label. Where footprints overlap,
    the DXA's drawing order decides (:data:`PROJECTION_ORDER`, by label name from the
    ``dseg.tsv``; other labels by value). ``None`` without a 3D label map of the MR or a
    3D MR.
    """
    own = record.get(f"{side}_dseg")
    if not own or not Path(own).is_file() or mr.coronal is None:
        return None
    labels = load_labels(own)
    if labels.ndim != 3:
        return None
    names = {name: value for value, name in label_table([record]).items()}
    order = [names[n] for n in PROJECTION_ORDER if n in names]
    footprint = mr.coronal.footprint(labels, precedence=order)
    return Transform.identity(ndim=2).apply(footprint, mr.grid, interpolation="nearest", fill=0)


def mr_side(record: Mapping[str, Any]) -> Literal["fixed", "moving"]:
    """Which image of a pair is the MR: the 3D one, or the moving one when both are 2D.

    Reads the file header only.
    """
    try:
        shape = [n for n in load_spatial(record["fixed"]).shape if n > 1]
    except Exception as exc:  # nibabel raises many types for a bad file
        raise InputError(
            f"{Path(record['fixed']).name}: unreadable ({type(exc).__name__})"
        ) from None
    # A third axis of a few entries holds channels (a 2D image), not slices.
    return "fixed" if len(shape) >= 3 and shape[2] > 4 else "moving"


def truth_path(record: Mapping[str, Any], side: str = "moving") -> Path | None:
    """The MR-slice ground truth of a pair: ``space-midcoronal_dseg`` or the MR's own dseg.

    The 2D slice labels are looked for next to the pair's ground-truth files (the demo
    writes them); otherwise the label map of the MR (the pair's ``side`` image; 3D, sampled
    by :func:`slice_truth`).
    """
    for key, label in (("moving_dseg", "moving_label"), ("fixed_dseg", "fixed_label")):
        path = record.get(key)
        if path and record.get(label):
            name = Path(path).name.replace(f"_space-{record[label]}_", f"_space-{SLICE_SPACE}_")
            candidate = Path(path).with_name(name)
            if candidate.is_file() and candidate.name != Path(path).name:
                return candidate
    own = record.get(f"{side}_dseg")
    return Path(own) if own and Path(own).is_file() else None


def subject_id(record: Mapping[str, Any]) -> str:
    """``01`` or ``01_ses-2``: one training item per subject and session."""
    subject = str(record["subject"])
    return f"{subject}_ses-{record['session']}" if record.get("session") else subject


# --- one subject ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferredSubject:
    """One training item: the MR slice and the labels moved onto it.

    Attributes:
        subject: Subject (and session) id.
        mr: The MR slice.
        labels: Transferred labels on ``mr.grid`` (int64 ``(X, Y)``).
        truth: The MR's own ground truth on the same grid, when known (evaluation only).
        extras: Registration details (method, runtime, matrix).
        footprint: The MR's ground truth as a projection (:func:`footprint_truth`), when
            its 3D labels are known (evaluation only).
    """

    subject: str
    mr: MRSlice
    labels: npt.NDArray[np.int64]
    truth: npt.NDArray[np.int64] | None = None
    extras: dict[str, Any] | None = None
    footprint: npt.NDArray[np.int64] | None = None


def register_planar(
    planar: PlanarPair,
    method: str,
    *,
    prealign_mode: str = "com",
    seed: int = 0,
    device: str = "cpu",
    threads: int = 1,
    models: Mapping[str, str] | None = None,
) -> tuple[Transform, dict[str, Any]]:
    """Register a planar pair as the participant level does (preprocess, pre-align, method).

    Returns:
        The fixed -> moving transform (valid for the unprocessed images) and extras.
    """
    options = PreprocessOptions(prealign=prealign_mode, coronal_slice=True)
    # The participant level's own preparation (channels included), for identical inputs.
    result = register(
        prepare_loaded(planar, options),
        method,
        seed=seed,
        device=device,
        threads=threads,
        models=models,
    )
    extras: dict[str, Any] = {"runtime_s": round(result.runtime_s, 3)}
    if result.transform.is_linear:
        extras["matrix"] = np.round(result.transform.as_affine(), 6).tolist()
    return result.transform, extras


def transfer_subject(
    record: Mapping[str, Any],
    method: str | Transform,
    *,
    prealign_mode: str = "com",
    seed: int = 0,
    device: str = "cpu",
    threads: int = 1,
    models: Mapping[str, str] | None = None,
    with_truth: bool = True,
) -> TransferredSubject:
    """Register a pair record's DXA to its MR slice and move the DXA labels onto the slice.

    The MR is the 3D image of the pair (or the moving one when both are 2D); the other
    image must have a label map (``fixed_dseg``/``moving_dseg``).

    Args:
        record: An ``mmreg train`` pair record.
        method: A registration method spec, or a known fixed -> moving transform.
        prealign_mode: Pre-alignment before the method (``none``, ``com``, ``moments``).
        seed, device, threads, models: As for :func:`mmreg.methods.run_chain`.
        with_truth: Also read the MR's ground truth onto the slice, when present.

    Raises:
        InputError: Without a label map of the DXA, or for unreadable images.
        MmregError: When registration fails.
    """
    side = mr_side(record)
    dxa_side: Literal["fixed", "moving"] = "moving" if side == "fixed" else "fixed"
    dseg = record.get(f"{dxa_side}_dseg")
    if not dseg or not Path(dseg).is_file():
        raise InputError(f"no label map of the {dxa_side} image (the DXA) to transfer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpineNotFoundWarning)
        planar = load_pair(str(record["fixed"]), str(record["moving"]), coronal_slice=True)
    if planar.fixed.ndim != 2:
        raise InputError("annotation transfer needs a 2D DXA and a 3D or 2D MR")
    if planar.sliced is None:
        # Two 2D images pass through the planar step without channels: read the MR's own.
        mr = load_mr_slice(record[side])
    else:
        mr = mr_slice(getattr(planar, side), record[side], planar.coronal)
    extras: dict[str, Any] = {}
    if isinstance(method, Transform):
        transform = method
        extras["method"] = "given"
    else:
        transform, extras = register_planar(
            planar,
            method,
            prealign_mode=prealign_mode,
            seed=seed,
            device=device,
            threads=threads,
            models=models,
        )
        extras["method"] = method
    labels = transfer_labels(load_labels(dseg, ndim=2), transform, mr.grid, source=dxa_side)
    truth = footprint = None
    if with_truth:
        path = truth_path(record, side)
        if path is not None:
            truth = slice_truth(load_labels(path), mr).data.astype(np.int64)
        projected = footprint_truth(record, side, mr)
        if projected is not None:
            footprint = projected.data.astype(np.int64)
    return TransferredSubject(
        subject_id(record), mr, labels.data.astype(np.int64), truth, extras, footprint
    )
