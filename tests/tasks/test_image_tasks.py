"""Single-step preprocessing tasks chain in Pydra and match the engine-free pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from pydra.compose import workflow

from mmreg.errors import InputError
from mmreg.imaging.image import Image, load_image, save_image
from mmreg.imaging.preprocess import PreprocessOptions, preprocess
from mmreg.imaging.transform import Transform
from mmreg.tasks.image import (
    ApplyTransform,
    MaskImage,
    NormalizeImage,
    PrealignImages,
    ReorientImage,
    ResampleImage,
    ValidateImage,
)

from factories import second_contrast, smooth_head


@workflow.define(outputs=["out_file"])
def _Chain(in_file: str, spacing: float) -> str:
    valid = workflow.add(ValidateImage(in_file=in_file), name="validate")
    canonical = workflow.add(ReorientImage(in_file=valid.out_file), name="reorient")
    iso = workflow.add(ResampleImage(in_file=canonical.out_file, spacing=spacing), name="resample")
    norm = workflow.add(NormalizeImage(in_file=iso.out_file), name="normalize")
    return norm.out_file


@pytest.fixture
def oblique_head(tmp_path):
    # LAS, anisotropic: reorientation and resampling both have work to do.
    affine = np.array([[-2.0, 0, 0, 40], [0, 2.5, 0, -50], [0, 0, 3.0, -40], [0, 0, 0, 1]])
    return save_image(Image(smooth_head((30, 28, 22), seed=2), affine), tmp_path / "h.nii.gz")


def test_chain_matches_engine_free_preprocess(oblique_head, tmp_path):
    result = _Chain(in_file=str(oblique_head), spacing=2.0)(
        worker="debug", cache_root=tmp_path / "c"
    )
    chained = load_image(result.out_file)
    direct = preprocess(load_image(oblique_head), PreprocessOptions(spacing=2.0))
    np.testing.assert_allclose(chained.affine, direct.affine)
    np.testing.assert_allclose(chained.data, direct.data, atol=1e-6)
    assert chained.affine[0, 0] > 0  # canonical RAS


def test_validate_rejects_bad_input(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    save_image(Image(np.zeros((16, 16, 16), np.float32)), bad)
    with pytest.raises(Exception, match="constant"):
        ValidateImage(in_file=bad)(worker="debug", cache_root=tmp_path / "c")
    with pytest.raises(InputError):
        load_image(bad)


def test_mask_prealign_and_apply(tmp_path):
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    head = smooth_head((26, 28, 24), seed=4)
    fixed = save_image(Image(head, affine), tmp_path / "f.nii.gz")
    shift = np.eye(4)
    shift[:3, 3] = [6.0, 0.0, 0.0]  # fixed point x -> moving point x + 6 mm
    moving_img = Transform.from_affine(np.linalg.inv(shift)).apply(
        Image(second_contrast(head), affine), load_image(fixed).grid
    )
    moving = save_image(moving_img, tmp_path / "m.nii.gz")
    cache = tmp_path / "c"
    masked = MaskImage(in_file=moving)(worker="debug", cache_root=cache)
    assert set(np.unique(load_image(masked.mask_file, check_contents=False).data)) == {0, 1}
    xfm = PrealignImages(fixed=fixed, moving=moving, mode="com")(
        worker="debug", cache_root=cache
    ).out_file
    recovered = Transform.read(xfm).as_affine()[:3, 3]
    np.testing.assert_allclose(recovered, [6.0, 0.0, 0.0], atol=1.5)
    warped = ApplyTransform(moving=moving, reference=fixed, transform=xfm)(
        worker="debug", cache_root=cache
    ).out_file
    before = np.corrcoef(load_image(moving).data.ravel(), second_contrast(head).ravel())[0, 1]
    after = np.corrcoef(load_image(warped).data.ravel(), second_contrast(head).ravel())[0, 1]
    assert after > before
