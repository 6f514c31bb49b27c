"""Real same-person scans with different fields of view keep their header alignment.

The moving scan is a real IXI head (DLMUSE labels), contrast-inverted and cut to its upper
part, on the scanner's own world coordinates: the header alignment is exact, and the
centres of mass of the two fields of view are centimetres apart.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from mmreg.bids_app.cli import main
from mmreg.imaging.image import Image, load_image, load_labels, save_image

from factories import write_dataset_description, write_pair

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


def _crop_top(image: Image, keep: float) -> Image:
    """The upper ``keep`` fraction along the voxel axis closest to superior."""
    axis = int(np.argmax(np.abs(image.affine[2, :3])))
    n = image.shape[axis]
    top = image.affine[2, axis] > 0
    start = int(n * (1 - keep)) if top else 0
    stop = n if top else int(n * keep)
    index = [slice(None)] * 3
    index[axis] = slice(start, stop)
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ np.array([s.start or 0 for s in index]) + affine[:3, 3]
    return Image(np.ascontiguousarray(image.data[tuple(index)]), affine)


@pytest.fixture
def fov_dataset(shared_data, tmp_path):
    data = shared_data / "ixi-t1-dlmuse"
    t1 = sorted((data / "t1").glob("*.nii.gz"))[7]
    fixed = load_image(t1)
    seg = load_labels(data / "seg" / t1.name.replace("_T1.nii.gz", "_T1_DLMUSE.nii.gz"))
    norm = np.clip(fixed.data / np.percentile(fixed.data, 99.5), 0, 1)
    head = ndimage.binary_fill_holes(ndimage.gaussian_filter(norm, 1.0) > 0.08)
    moving = _crop_top(
        Image(np.where(head, 1.05 - norm, 0.0).astype(np.float32), fixed.affine), 0.55
    )
    moving_seg = _crop_top(seg, 0.55)
    root = tmp_path / "bids"
    write_dataset_description(root)
    write_pair(root, "ixi", fixed=fixed, moving=moving)
    gt = root / "derivatives" / "ground-truth"
    anat = gt / "sub-ixi" / "anat"
    anat.mkdir(parents=True)
    (gt / "dataset_description.json").write_text(
        json.dumps({"Name": "truth", "BIDSVersion": "1.10.0", "DatasetType": "derivative"})
    )
    save_image(seg, anat / "sub-ixi_space-T1w_dseg.nii.gz")
    save_image(moving_seg, anat / "sub-ixi_space-T2w_dseg.nii.gz")
    return root


def _row(root, out, *extra):
    code = main([str(root), str(out), "participant", "--methods", "identity", *extra])
    assert code == 0
    return pd.read_csv(out / "sub-ixi" / "sub-ixi_evaluation.csv").iloc[0]


def test_default_prealignment_keeps_the_header(fov_dataset, tmp_path):
    default = _row(fov_dataset, tmp_path / "default")
    header = _row(fov_dataset, tmp_path / "none", "--prealign", "none")
    com = _row(fov_dataset, tmp_path / "com", "--prealign", "com")
    # The header alignment is exact (labels cut by the crop keep their cut part only).
    assert default["dice_mean"] == header["dice_mean"] > 0.85
    print(
        f"label Dice: default {default['dice_mean']:.3f}, header {header['dice_mean']:.3f}, "
        f"com {com['dice_mean']:.3f}"
    )
    assert com["dice_mean"] < header["dice_mean"] - 0.3, (com["dice_mean"], header["dice_mean"])
