"""Make the 2 mm brain template shipped in ``mmreg/data/`` (run once, by hand).

The source is the MNI ICBM152 2009a symmetric template (T1, GM and WM maps at
1 mm) as distributed with nilearn. This script is the only place that imports
nilearn; runtime code reads the files it writes through
:func:`mmreg.imaging.phantoms.brain.load_template`.

Usage::

    python -m mmreg.imaging.phantoms.make_template [OUT_DIR]

Each map is cropped to the brain's bounding box plus a margin (room for the
synthetic skull and scalp the brain phantom adds), low-pass filtered and subsampled to 2 mm
quantised and stored as gzipped uint8 NIfTI.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mmreg.imaging.image import load_spatial

#: Names of the shipped files, by map.
TEMPLATE_FILES = {
    "t1": "mni_icbm152_2009a_sym_2mm_T1w.nii.gz",
    "gm": "mni_icbm152_2009a_sym_2mm_probseg-GM.nii.gz",
    "wm": "mni_icbm152_2009a_sym_2mm_probseg-WM.nii.gz",
}

#: Margin around the brain in mm; must hold the phantom's skull and scalp.
MARGIN_MM = 18

#: Quantisation step of the stored uint8 values; coarser steps compress much
#: better and are far below the noise the phantom adds.
QUANT_STEP = 4


def _source_files() -> dict[str, Path]:
    import nilearn  # only this one-off script depends on nilearn

    base = Path(nilearn.__file__).parent / "datasets" / "data"
    return {k: base / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in TEMPLATE_FILES}


def make_template(out_dir: Path) -> list[Path]:
    """Write the 2 mm template maps into ``out_dir``.

    Args:
        out_dir: Destination folder (normally ``mmreg/data``).

    Returns:
        The written files.
    """
    src = {k: load_spatial(p) for k, p in _source_files().items()}
    affine = src["t1"].affine
    arrays = {k: np.asarray(img.dataobj, dtype=np.float32) for k, img in src.items()}
    brain = np.argwhere(arrays["t1"] > 0)
    lo = np.maximum(brain.min(0) - MARGIN_MM, 0)
    hi = np.minimum(brain.max(0) + 1 + MARGIN_MM, arrays["t1"].shape)
    # 2 mm voxels centred on even-mm 1 mm voxels (the world origin is voxel
    # (98, 134, 72)), so the grid keeps a voxel plane at x = 0 and stays
    # left-right symmetric like the template itself.
    origin = np.rint(np.linalg.solve(affine, [0, 0, 0, 1])[:3]).astype(int)
    lo = lo + (lo - origin) % 2
    new_affine = affine @ np.array(
        [[2, 0, 0, lo[0]], [0, 2, 0, lo[1]], [0, 0, 2, lo[2]], [0, 0, 0, 1]], dtype=np.float64
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, name in TEMPLATE_FILES.items():
        # A [1, 2, 1] / 4 tent filter before taking every second voxel: the
        # anti-aliasing average of a 2 mm voxel centred on a 1 mm one.
        smooth = arrays[key]
        for axis in range(3):
            smooth = ndimage.correlate1d(smooth, [0.25, 0.5, 0.25], axis=axis, mode="constant")
        blocks = smooth[lo[0] : hi[0] : 2, lo[1] : hi[1] : 2, lo[2] : hi[2] : 2]
        data = np.clip(np.rint(blocks / QUANT_STEP) * QUANT_STEP, 0, 255).astype(np.uint8)
        img = nib.Nifti1Image(data, new_affine)
        img.set_sform(new_affine, code=4)  # 4 = MNI152
        img.set_qform(new_affine, code=4)
        img.header.set_xyzt_units("mm")
        img.header["descrip"] = b"MNI ICBM152 2009a sym, 2mm, (c) McConnell BIC"
        path = out_dir / name
        # Fixed gzip mtime and the best compression: byte-identical, small reruns.
        path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=9, mtime=0))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    argv = sys.argv[1:] if argv is None else argv
    default = Path(__file__).resolve().parents[2] / "mmreg" / "data"
    out_dir = Path(argv[0]) if argv else default
    for path in make_template(out_dir):
        print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
