"""A BIDS dataset where intensity similarity fails: IXI T1w (labelled) vs an ultrasound-like
second scan of the same head (``T2w`` suffix), misaligned.

The second scan is the T2-like contrast of :func:`benchmarks.real_pairs.t2_like`, then made
ultrasound-like: multiplicative speckle (Rayleigh), depth attenuation along one axis, a
blur, and a cut-off field of view, then moved by a random rigid transform (up to 10
degrees, 8 mm) and a smooth deformation. Ground truth (``derivatives/ground-truth``): on
both images, three structures from DLMUSE: the ventricles (1), the brain stem and
cerebellum (2) and the rest of the brain (3).

    python benchmarks/segguided_data.py OUT_DIR [--subjects N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.heldout import IXI_HELDOUT  # noqa: E402
from benchmarks.real_pairs import IXI_DIR, SHARED_DATA, ixi_subject, t2_like  # noqa: E402

#: DLMUSE ids: ventricles; brain stem and cerebellum (35, 38-41: stem, cerebellar GM/WM).
VENTRICLES = (4, 11, 49, 50, 51, 52)
HINDBRAIN = (35, 38, 39, 40, 41)
NAMES = {1: "ventricles", 2: "hindbrain", 3: "brain"}


def structures(labels: np.ndarray) -> np.ndarray:
    out = np.where(labels > 0, 3, 0)
    out[np.isin(labels, HINDBRAIN)] = 2
    out[np.isin(labels, VENTRICLES)] = 1
    return out.astype(np.int16)


def ultrasound_like(t2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = t2 / max(float(np.percentile(t2, 99)), 1e-6)
    speckle = rng.rayleigh(1.0, x.shape) / np.sqrt(np.pi / 2)
    depth = np.exp(-np.linspace(0.0, 1.2, x.shape[1]))[None, :, None]
    out = ndimage.gaussian_filter(x * speckle, 0.8) * depth
    out[:, : x.shape[1] // 10] = 0.0  # the probe's near field is cut off
    return (np.clip(out, 0, None) * 180).astype(np.float32)


def _motion(shape: tuple[int, ...], spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Voxel coordinates to sample the moved image at: rigid (10 deg, 8 mm) + smooth field."""
    angles = np.deg2rad(rng.uniform(-10, 10, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    shift = rng.uniform(-8, 8, 3) / spacing
    centre = (np.asarray(shape) - 1) / 2
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    coords = rot @ (grid - centre[:, None]) + centre[:, None] + shift[:, None]
    for axis in range(3):
        coarse = rng.normal(0, 2.0 / spacing * 1.5, (5, 5, 5))
        zoom = [s / 5 for s in shape]
        field = ndimage.zoom(coarse, zoom, order=3)[: shape[0], : shape[1], : shape[2]]
        coords[axis] += field.reshape(-1)
    return coords.reshape(3, *shape)


def write_subject(bids: Path, gt: Path, ixi_id: str, index: int, seed: int) -> None:
    rng = np.random.default_rng(seed * 1000 + index)
    t1, labels = ixi_subject(ixi_id, SHARED_DATA)
    lab = np.asarray(labels.data).astype(np.int32)
    classes = structures(lab)
    t2 = np.asarray(t2_like(t1, labels, seed=seed * 1000 + index).data)
    us = ultrasound_like(t2, rng)
    coords = _motion(us.shape, float(t1.spacing[0]), rng)
    us_moved = ndimage.map_coordinates(us, coords, order=1, mode="constant")
    cls_moved = ndimage.map_coordinates(classes, coords, order=0, mode="constant")
    sub = f"sub-{index + 1:02d}"
    anat, gt_anat = bids / sub / "anat", gt / sub / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    gt_anat.mkdir(parents=True, exist_ok=True)
    affine = t1.affine
    nib.save(nib.Nifti1Image(np.asarray(t1.data, np.float32), affine), anat / f"{sub}_T1w.nii.gz")
    nib.save(nib.Nifti1Image(us_moved.astype(np.float32), affine), anat / f"{sub}_T2w.nii.gz")
    nib.save(nib.Nifti1Image(classes, affine), gt_anat / f"{sub}_space-T1w_dseg.nii.gz")
    nib.save(
        nib.Nifti1Image(cls_moved.astype(np.int16), affine),
        gt_anat / f"{sub}_space-T2w_dseg.nii.gz",
    )


def write_dataset(out: Path, subjects: int = 20, seed: int = 0) -> Path:
    ids = sorted(p.name.split("_")[0] for p in (SHARED_DATA / IXI_DIR / "t1").glob("*_T1.nii.gz"))
    # Training subjects first, the held-out ones last (so a --participant-label split is easy).
    ids = [i for i in ids if i not in IXI_HELDOUT] + [i for i in ids if i in IXI_HELDOUT]
    bids, gt = out, out / "derivatives" / "ground-truth"
    for root, kind in ((bids, "raw"), (gt, "derivative")):
        root.mkdir(parents=True, exist_ok=True)
        desc = {"Name": "segguided dev", "BIDSVersion": "1.9.0", "DatasetType": kind}
        if kind == "derivative":
            desc["GeneratedBy"] = [{"Name": "benchmarks/segguided_data.py"}]
        (root / "dataset_description.json").write_text(json.dumps(desc, indent=2))
    (gt / "dseg.tsv").write_text(
        "index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in NAMES.items())
    )
    for index, ixi_id in enumerate(ids[:subjects]):
        write_subject(bids, gt, ixi_id, index, seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_dataset(args.out, args.subjects, args.seed))


if __name__ == "__main__":
    main()
