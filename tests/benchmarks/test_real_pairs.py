"""The deformable benchmark's pair loaders and the DNS training-set writer, on the real data.

Everything here reads ``../shared/data`` and skips when it is absent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mmreg.imaging.metrics import dice
from mmreg.imaging.transform import Transform

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is a folder of scripts, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import real_pairs  # noqa: E402
from benchmarks.heldout import IXI_HELDOUT  # noqa: E402

pytestmark = pytest.mark.shared_data


def _load_trainset_writer():
    spec = importlib.util.spec_from_file_location(
        "_make_dns_trainset", REPO / "scripts" / "make-dns-trainset.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mean_dice(fixed: np.ndarray, warped: np.ndarray) -> float:
    scores = dice(fixed, warped)
    return float(np.mean(list(scores.values())))


def _check_standard(image) -> None:
    assert np.allclose(image.spacing, real_pairs.SPACING_MM)
    # Canonical: voxel axis i points mostly along world axis i, positively.
    directions = image.affine[:3, :3]
    assert np.all(np.argmax(np.abs(directions), axis=0) == [0, 1, 2])
    assert np.all(np.diag(directions) > 0)


@pytest.fixture(scope="module")
def stroke(request):
    if not real_pairs.SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {real_pairs.SHARED_DATA}")
    return real_pairs.stroke_pairs(seed=0)


def test_stroke_truth_is_exact_and_identity_is_not(stroke) -> None:
    assert [p.name for p in stroke] == ["stroke-T1-T2", "stroke-T1-FLAIR"]
    for pair in stroke:
        _check_standard(pair.fixed)
        _check_standard(pair.moving)
        assert pair.fixed_points.shape == (200, 3)
        # The points are brain voxels of the fixed image.
        ijk = np.round(pair.fixed.grid.world_to_voxel(pair.fixed_points)).astype(int)
        assert np.all(pair.fixed_labels.data[tuple(ijk.T)] > 0)
        truth_tre = np.linalg.norm(
            pair.truth.map_points(pair.fixed_points) - pair.moving_points, axis=1
        )
        identity_tre = np.linalg.norm(pair.fixed_points - pair.moving_points, axis=1)
        assert truth_tre.max() < 1e-6
        assert identity_tre.mean() > 1.0
        assert 2.0 < np.abs(identity_tre).max() < 20.0
        # Smooth and invertible: no folding anywhere on the fixed grid.
        assert pair.truth.jacobian_determinant(pair.fixed).min() > 0.2


def test_stroke_labels_and_images_follow_the_truth(stroke) -> None:
    for pair in stroke:
        assert set(np.unique(pair.fixed_labels.data)) == {0, 1, 2, 3}
        through_truth = pair.truth.apply(pair.moving_labels, pair.fixed, interpolation="nearest")
        as_is = Transform.identity().apply(pair.moving_labels, pair.fixed, interpolation="nearest")
        perfect = _mean_dice(pair.fixed_labels.data, through_truth.data)
        identity = _mean_dice(pair.fixed_labels.data, as_is.data)
        # ~0.91: the ceiling of two resamplings of 3-class tissue maps at 2 mm.
        assert perfect > 0.88
        assert perfect > identity + 0.2
        # The image was made with the same (inverse) map: warped back, it sits on the
        # fixed image's brain, which it does not without the truth.
        brain = pair.fixed_labels.data > 0
        warped = pair.truth.apply(pair.moving, pair.fixed).data
        unwarped = Transform.identity().apply(pair.moving, pair.fixed).data
        assert (warped[~brain] > 5).mean() < 0.5 * (unwarped[~brain] > 5).mean()


def test_stroke_deformation_is_seeded(stroke) -> None:
    pair = stroke[0]
    grid, u = real_pairs.random_field(np.random.default_rng([0, 0]), pair.moving.grid)
    assert pair.truth.steps[0].grid.shape == grid.shape
    assert np.array_equal(pair.truth.steps[0].grid.affine, grid.affine)
    assert np.array_equal(pair.truth.steps[0].vectors, u)
    assert np.isclose(np.linalg.norm(u, axis=-1).max(), 7.0)
    _, other = real_pairs.random_field(np.random.default_rng([1, 0]), pair.moving.grid)
    assert not np.allclose(other, u)


def test_ixi_pairs_are_held_out_inter_subject_with_labels(shared_data: Path) -> None:
    pairs = real_pairs.ixi_pairs(shared_data)
    assert len(pairs) == len(IXI_HELDOUT)
    short = [i.split("-")[0] for i in IXI_HELDOUT]
    for k, pair in enumerate(pairs):
        assert pair.name == f"ixi-{short[k]}-{short[(k + 1) % len(short)]}"
        _check_standard(pair.fixed)
        _check_standard(pair.moving)
        assert pair.fixed_labels is not None and pair.moving_labels is not None
        assert pair.fixed_labels.shape == pair.fixed.shape
        assert pair.moving_labels.shape == pair.moving.shape
        assert len(np.unique(pair.fixed_labels.data)) > 100
        # Different subjects: different label maps and anatomy.
        assert not np.array_equal(pair.fixed_labels.data, pair.moving_labels.data)
        # T2-like: ventricles bright, white matter dark, unlike the T1.
        for image, labels, csf_brighter in (
            (pair.moving, pair.moving_labels, True),
            (pair.fixed, pair.fixed_labels, False),
        ):
            lab = labels.data
            csf = np.median(image.data[np.isin(lab, (51, 52))])
            wm = np.median(image.data[np.isin(lab, real_pairs.MUSE_WM)])
            assert (csf > 1.5 * wm) if csf_brighter else (csf < 0.8 * wm)


def test_brats_landmarks_lie_in_the_brain_and_move_a_few_mm(shared_data: Path) -> None:
    (pair,) = real_pairs.brats_pairs(shared_data)
    assert pair.fixed_points.shape == pair.moving_points.shape == (6, 3)
    for points, image in ((pair.fixed_points, pair.fixed), (pair.moving_points, pair.moving)):
        ijk = np.round(image.grid.world_to_voxel(points)).astype(int)
        assert np.all(image.data[tuple(ijk.T)] > 0.2 * np.percentile(image.data, 99))
    identity_tre = np.linalg.norm(pair.fixed_points - pair.moving_points, axis=1)
    assert 1.0 < identity_tre.mean() < 5.0


def test_demo_pairs_truth() -> None:
    pairs = real_pairs.demo_pairs(1, seed=1000)
    assert [p.name for p in pairs] == ["demo-01-T1w-T2w", "demo-01-T1w-PDw"]
    for pair in pairs:
        _check_standard(pair.moving)
        mapped = pair.truth.map_points(pair.fixed_points)
        assert np.linalg.norm(mapped - pair.moving_points, axis=1).max() < 0.2
        assert np.linalg.norm(pair.fixed_points - pair.moving_points, axis=1).mean() > 3.0


def test_trainset_excludes_held_out_subjects(shared_data: Path, tmp_path: Path) -> None:
    writer = _load_trainset_writer()
    out = tmp_path / "trainset"
    written = writer.write_trainset(out, shared_data)
    all_ids = sorted(
        p.name[:-10] for p in (shared_data / "ixi-t1-dlmuse" / "t1").glob("*_T1.nii.gz")
    )
    expected = [writer.bids_label(i) for i in all_ids if i not in IXI_HELDOUT]
    assert written == [*expected, "stroke"]
    subjects = sorted(p.name for p in out.glob("sub-*"))
    assert subjects == sorted(f"sub-{s}" for s in written)
    for held_out in IXI_HELDOUT:
        assert not list(out.glob(f"sub-{writer.bids_label(held_out)}*"))
    files = list(out.rglob("*.nii.gz"))
    assert len(files) == len(expected) + 3
    assert all(f.is_file() and not f.is_symlink() for f in files)
    assert sorted(f.name for f in (out / "sub-stroke" / "anat").iterdir()) == [
        "sub-stroke_FLAIR.nii.gz",
        "sub-stroke_T1w.nii.gz",
        "sub-stroke_T2w.nii.gz",
    ]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and "BIDSVersion" in description
    assert (out / "participants.tsv").read_text().count("\n") == len(written) + 1
    # It rewrites its own output, and refuses a folder it did not write.
    assert writer.write_trainset(out, shared_data) == written
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        writer.write_trainset(foreign, shared_data)
    assert (foreign / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_convexadam_conversion_recovers_a_known_shift(shared_data: Path) -> None:
    """Sign and axis order of the convexAdam displacement -> mmreg transform conversion."""
    pytest.importorskip("convexAdam")
    from benchmarks.bench_deformable import convexadam_transform

    fixed = real_pairs.stroke_pairs(data=shared_data)[0].fixed
    t2 = real_pairs.standardise(
        real_pairs.load_image(shared_data / "stroke-t1-t2-flair" / "T2.nii.gz")
    )
    shift = np.array([6.0, -4.0, 2.0])  # distinct per axis, both signs
    back = np.eye(4)
    back[:3, 3] = -shift
    moving = Transform.from_affine(back).apply(t2, fixed)  # truth: x -> x + shift
    points = fixed.grid.voxel_to_world(np.argwhere(fixed.data > 20)[::50])
    half = np.eye(4)
    half[:3, 3] = shift / 2
    for initial in (None, Transform.from_affine(half)):
        transform, _ = convexadam_transform(fixed, moving, initial, threads=1)
        moved = np.median(transform.map_points(points) - points, axis=0)
        assert np.allclose(moved, shift, atol=0.8), moved
