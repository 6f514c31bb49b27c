"""Tiny BIDS datasets for tests: smooth random heads and every kind of broken input."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mmreg.imaging.image import Image, save_image


def smooth_head(shape: tuple[int, ...] = (32, 36, 30), *, seed: int = 0) -> np.ndarray:
    """A blobby 'head': an ellipsoid with smooth random internal structure."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radius = sum((g / r) ** 2 for g, r in zip(grids, (0.8, 0.85, 0.75), strict=False))
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)
    texture = (texture - texture.min()) / np.ptp(texture)
    head = (radius < 1).astype(np.float32) * (0.4 + 0.6 * texture.astype(np.float32))
    return ndimage.gaussian_filter(head, 0.7).astype(np.float32)


def second_contrast(data: np.ndarray) -> np.ndarray:
    """A non-monotonic remap, so only a multi-modal similarity aligns the two."""
    return (np.sin(3.0 * data) ** 2 + 0.2 * data).astype(np.float32)


def write_dataset_description(root: Path, name: str = "test") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": name, "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )


def write_pair(
    root: Path,
    subject: str,
    *,
    fixed: Image,
    moving: Image,
    fixed_suffix: str = "T1w",
    moving_suffix: str = "T2w",
) -> dict[str, Path]:
    anat = root / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    return {
        "fixed": save_image(fixed, anat / f"sub-{subject}_{fixed_suffix}.nii.gz"),
        "moving": save_image(moving, anat / f"sub-{subject}_{moving_suffix}.nii.gz"),
    }


#: The eleven kinds of broken input, each given to its own subject.
BROKEN_KINDS = (
    "empty",
    "truncated",
    "notnifti",
    "nan",
    "inf",
    "allzero",
    "fourd",
    "singular",
    "missing",
    "toosmall",
    "dimmismatch",
)


def write_broken_subject(root: Path, subject: str, kind: str, good: dict[str, Path]) -> None:
    """Copy a good subject's pair and break its moving image in one way."""
    fixed_img = nib.load(good["fixed"])
    moving_img = nib.load(good["moving"])
    anat = root / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    nib.save(fixed_img, anat / f"sub-{subject}_T1w.nii.gz")
    moving = anat / f"sub-{subject}_T2w.nii.gz"
    data = np.asarray(moving_img.dataobj, dtype=np.float32)
    affine = moving_img.affine
    if kind == "empty":
        moving.write_bytes(b"")
    elif kind == "truncated":
        raw = good["moving"].read_bytes()
        moving.write_bytes(raw[: len(raw) // 3])
    elif kind == "notnifti":
        moving.write_bytes(gzip.compress(b"this is a text file, not an image\n" * 20))
    elif kind in ("nan", "inf"):
        bad = data.copy()
        bad[bad.shape[0] // 2, :, :] = np.nan if kind == "nan" else np.inf
        nib.save(nib.Nifti1Image(bad, affine), moving)
    elif kind == "allzero":
        nib.save(nib.Nifti1Image(np.zeros_like(data), affine), moving)
    elif kind == "fourd":
        nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), affine), moving)
    elif kind == "singular":
        img = nib.Nifti1Image(data, affine)
        singular = affine.copy()
        singular[:3, 2] = 0.0
        img.set_sform(singular, code=1)
        img.set_qform(None, code=0)
        nib.save(img, moving)
    elif kind == "missing":
        pass  # the moving modality simply is not there
    elif kind == "toosmall":
        c = [n // 2 for n in data.shape]
        small = data[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2]
        nib.save(nib.Nifti1Image(small.copy(), affine), moving)
    elif kind == "dimmismatch":
        nib.save(nib.Nifti1Image(data[:, :, data.shape[2] // 2].copy(), affine), moving)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def random_pose(rng: np.random.Generator, angle_deg: float, shift_mm: float) -> np.ndarray:
    """A rigid 4x4 map: rotation by ``angle_deg`` about a random axis, then a shift."""
    from scipy.spatial.transform import Rotation

    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_rotvec(np.deg2rad(angle_deg) * axis).as_matrix()
    direction = rng.standard_normal(3)
    pose[:3, 3] = shift_mm * direction / np.linalg.norm(direction)
    return pose


def write_posed_remap_subject(
    root: Path,
    subject: str,
    *,
    image: Path,
    labels: Path,
    pose: np.ndarray,
    fixed_suffix: str = "T1w",
    moving_suffix: str = "T2w",
    n_landmarks: int = 10,
) -> None:
    """A real image as the fixed scan; a T2-like remap of it in another pose as the moving.

    The moving scan is the fixed one inverted inside the head (dark WM, bright CSF),
    seen through ``pose`` (fixed-space point -> moving-space point). Labels and label
    centroids (as landmarks) go to ``root/derivatives/ground-truth`` in both spaces.
    """
    from mmreg.imaging.image import load_image, load_labels
    from mmreg.imaging.transform import Transform

    fixed = load_image(image)
    seg = load_labels(labels)
    norm = np.clip(fixed.data / np.percentile(fixed.data, 99.5), 0, 1)
    head = ndimage.binary_fill_holes(ndimage.gaussian_filter(norm, 1.0) > 0.08)
    remap = np.where(head, 1.05 - norm, 0.0).astype(np.float32)
    to_moving = Transform.from_affine(np.linalg.inv(pose))
    moving = to_moving.apply(Image(remap, fixed.affine), fixed.grid)
    moving_seg = to_moving.apply(seg, fixed.grid, interpolation="nearest")
    write_pair(
        root,
        subject,
        fixed=fixed,
        moving=moving,
        fixed_suffix=fixed_suffix,
        moving_suffix=moving_suffix,
    )
    gt = root / "derivatives" / "ground-truth"
    write_dataset_description(gt, "ground truth")
    desc = json.loads((gt / "dataset_description.json").read_text())
    desc.update(DatasetType="derivative", GeneratedBy=[{"Name": "mmreg tests"}])
    (gt / "dataset_description.json").write_text(json.dumps(desc))
    anat = gt / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    save_image(seg, anat / f"sub-{subject}_space-{fixed_suffix}_dseg.nii.gz")
    save_image(moving_seg, anat / f"sub-{subject}_space-{moving_suffix}_dseg.nii.gz")
    ids = [i for i in np.unique(seg.data) if i != 0]
    sizes = ndimage.sum(np.ones_like(seg.data), seg.data, ids)
    chosen = [ids[i] for i in np.argsort(sizes)[::-1][:n_landmarks]]
    centres = np.array(ndimage.center_of_mass(np.ones_like(seg.data), seg.data, chosen))
    world = seg.grid.voxel_to_world(centres)
    moving_world = (np.c_[world, np.ones(len(world))] @ pose.T)[:, :3]
    for suffix, points in ((fixed_suffix, world), (moving_suffix, moving_world)):
        lines = ["name\tx\ty\tz"] + [
            f"label{lab}\t{x:.4f}\t{y:.4f}\t{z:.4f}"
            for lab, (x, y, z) in zip(chosen, points, strict=True)
        ]
        (anat / f"sub-{subject}_space-{suffix}_desc-landmarks.tsv").write_text(
            "\n".join(lines) + "\n"
        )


# --------------------------------------------------------------------------- fields of view


def spine_phantom(seed: int = 0, shape: tuple[int, int, int] = (24, 24, 100)) -> Image:
    """A spine-like column along z at 2 mm (48 x 48 x 200 mm), centred on the origin.

    A textured elliptic body, vertebrae of random heights (so no shift along the
    column looks like another) and a bright cord: a translation along z changes the
    foreground's centre only through the field of view, as in a cervical MR.
    """
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[2.0 * (np.arange(n) - (n - 1) / 2) for n in shape], indexing="ij")
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    texture = (texture - texture.min()) / np.ptp(texture)
    data = ((x / 20) ** 2 + (y / 16) ** 2 < 1) * (0.3 + 0.4 * texture)
    edges = z.min() + np.cumsum(rng.uniform(10.0, 22.0, size=shape[2]))
    for lo, hi in itertools.pairwise(edges[edges < z.max()]):
        data[(x**2 + (y + 6) ** 2 < 36) & (z >= lo) & (z < hi - 3)] += 0.5
    data[x**2 + (y - 4) ** 2 < 6] = 1.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1)
    return Image(ndimage.gaussian_filter(data, 0.7).astype(np.float32), affine)


def crop_image(img: Image, *index: slice) -> Image:
    """``img[index]`` with its affine moved along, so world coordinates stay right."""
    start = np.zeros(3)
    start[: len(index)] = [s.start or 0 for s in index]
    affine = img.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ start
    return Image(np.ascontiguousarray(img.data[index]), affine)


def shift_image(img: Image, shift: np.ndarray) -> Image:
    """The same data ``shift`` mm further along in world: fixed->moving is ``p -> p + shift``."""
    affine = img.affine.copy()
    affine[:3, 3] += shift
    return Image(img.data, affine)


def remap_image(img: Image) -> Image:
    """:func:`second_contrast` of an image, on the same grid."""
    return Image(second_contrast(img.data), img.affine)
