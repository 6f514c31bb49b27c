"""Brain phantom: determinism, labels, landmarks consistent with the images, contrasts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mmreg.imaging.image import Grid, Image
from mmreg.imaging.phantoms.brain import (
    BRAIN_LABELS,
    MNI_LANDMARKS,
    BrainSubject,
    generate_brain_subject,
    load_template,
)

SEED = 3
VENTRICLE_LANDMARKS = [n for n in MNI_LANDMARKS if "horn" in n or "atrium" in n]


@pytest.fixture(scope="module")
def subject() -> BrainSubject:
    return generate_brain_subject(SEED)


def _sample_at(image: Image, points: np.ndarray, order: int) -> np.ndarray:
    ijk = image.grid.world_to_voxel(points).T
    return ndimage.map_coordinates(image.data, ijk, order=order, mode="constant")


def _pull_labels(subject: BrainSubject, moving: Image, fixed: Grid) -> np.ndarray:
    """Moving labels resampled onto the fixed grid through the true fixed->moving map."""
    pts = fixed.world_coordinates().reshape(-1, 3)
    return _sample_at(moving, subject.fixed_to_moving(pts), 0).reshape(fixed.shape)


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return 2.0 * np.sum(x & y) / max(np.sum(x) + np.sum(y), 1)


def test_same_seed_same_subject_other_seed_differs(subject: BrainSubject) -> None:
    again = generate_brain_subject(SEED)
    for name, image in subject.images.items():
        np.testing.assert_array_equal(image.data, again.images[name].data, err_msg=name)
        np.testing.assert_array_equal(image.affine, again.images[name].affine)
    np.testing.assert_array_equal(subject.labels_moving.data, again.labels_moving.data)
    np.testing.assert_array_equal(subject.pose, again.pose)
    other = generate_brain_subject(SEED + 1)
    assert not np.allclose(other.pose, subject.pose)
    assert other.t1w.shape != subject.t1w.shape or not np.array_equal(
        other.t1w.data, subject.t1w.data
    )


def test_grids_types_and_pose(subject: BrainSubject) -> None:
    assert subject.t1w.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert subject.t2w.spacing == pytest.approx((2.4, 2.4, 2.4))
    np.testing.assert_array_equal(subject.t2w.affine, subject.pdw.affine)
    assert subject.t2w.affine[0, 0] < 0  # moving scans are stored LAS
    for image in subject.images.values():
        assert image.data.dtype == np.float32
        assert np.all(np.isfinite(image.data)) and image.data.min() >= 0
    rot = subject.pose[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    # the pose is never near the identity: at least half the maximum rotation
    angle = abs(subject.metadata["rotation_angle_deg"])
    assert 10.0 <= angle <= 20.0
    from scipy.spatial.transform import Rotation

    assert np.rad2deg(Rotation.from_matrix(rot).magnitude()) == pytest.approx(angle)


def test_label_set_and_landmarks(subject: BrainSubject) -> None:
    assert set(BRAIN_LABELS) == set(range(12))
    for labels in (subject.labels_fixed, subject.labels_moving):
        assert labels.data.dtype == np.int32
        assert set(np.unique(labels.data)) == set(BRAIN_LABELS)
    assert len(subject.landmarks_fixed) >= 8
    assert list(subject.landmarks_fixed) == list(MNI_LANDMARKS) == list(subject.landmarks_moving)


def test_template_labels_are_symmetric() -> None:
    tpl = load_template()
    counts = {k: int(np.sum(tpl.labels == k)) for k in BRAIN_LABELS}
    for left, right in [(6, 7), (8, 9)]:
        assert counts[left] == counts[right] > 500
    assert counts[10] > 10 * counts[8]


def test_true_transform_maps_fixed_landmarks_onto_moving(subject: BrainSubject) -> None:
    names = list(subject.landmarks_fixed)
    fixed = np.array([subject.landmarks_fixed[n] for n in names])
    moving = np.array([subject.landmarks_moving[n] for n in names])
    mapped = subject.fixed_to_moving(fixed)
    # The stored field is the inverse deformation sampled on a 6 mm grid.
    assert np.max(np.linalg.norm(mapped - moving, axis=1)) < 0.1
    # Without its deformation the true map is only the pose; the extra deformation is real.
    rigid_only = fixed @ subject.pose[:3, :3].T + subject.pose[:3, 3]
    assert np.max(np.linalg.norm(rigid_only - moving, axis=1)) > 0.05


def test_rigid_only_subject_landmarks_follow_the_pose() -> None:
    s = generate_brain_subject(11, extra_deformation_mm=0.0, large_rotations=True)
    assert np.abs(s.displacement).max() == 0.0
    assert "rotation_angle_deg" in s.metadata
    for name, xyz in s.landmarks_fixed.items():
        expected = s.pose[:3, :3] @ xyz + s.pose[:3, 3]
        np.testing.assert_allclose(s.landmarks_moving[name], expected, atol=1e-6, err_msg=name)
    # The moving labels still line up with the fixed ones through the pose.
    pulled = _pull_labels(s, s.labels_moving, s.labels_fixed.grid)
    assert _dice(pulled, s.labels_fixed.data, 10) > 0.85


def test_labels_agree_through_the_true_transform(subject: BrainSubject) -> None:
    fixed = subject.labels_fixed
    pulled = _pull_labels(subject, subject.labels_moving, fixed.grid)
    for label in (2, 3, 4, 5, 10):
        assert _dice(pulled, fixed.data, label) > 0.8, BRAIN_LABELS[label]
    # Ignoring the pose misaligns them badly: the check has teeth.
    identity = _sample_at(
        subject.labels_moving, fixed.grid.world_coordinates().reshape(-1, 3), 0
    ).reshape(fixed.shape)
    assert _dice(identity, fixed.data, 4) < 0.6


def test_landmarks_sit_on_the_same_anatomy_in_every_image(subject: BrainSubject) -> None:
    tpl = load_template()
    for name, mni in MNI_LANDMARKS.items():
        ijk = np.rint(tpl.grid.world_to_voxel(mni)[0]).astype(int)
        expected = int(tpl.labels[tuple(ijk)])
        if name in VENTRICLE_LANDMARKS:
            assert expected == (8 if name.endswith("left") else 9), name
        for labels, landmarks in [
            (subject.labels_fixed, subject.landmarks_fixed),
            (subject.labels_moving, subject.landmarks_moving),
        ]:
            # The template's label at the landmark is within a voxel of it in each scan.
            ijk = np.rint(labels.grid.world_to_voxel(landmarks[name])[0]).astype(int)
            patch = labels.data[tuple(slice(i - 1, i + 2) for i in ijk)]
            assert expected in patch, name
    # Ventricles: dark in T1w, bright in T2w.
    vf = np.array([subject.landmarks_fixed[n] for n in VENTRICLE_LANDMARKS])
    vm = np.array([subject.landmarks_moving[n] for n in VENTRICLE_LANDMARKS])
    brain_f = subject.t1w.data[subject.labels_fixed.data > 0]
    brain_m = subject.t2w.data[subject.labels_moving.data > 0]
    assert np.median(_sample_at(subject.t1w, vf, 1)) < np.median(brain_f)
    assert np.median(_sample_at(subject.t2w, vm, 1)) > np.median(brain_m)


def test_contrasts_order_tissues_differently(subject: BrainSubject) -> None:
    def means(image: Image, labels: Image) -> dict[str, float]:
        lab = labels.data
        return {
            "wm": float(np.mean(image.data[np.isin(lab, (4, 5))])),
            "gm": float(np.mean(image.data[np.isin(lab, (2, 3))])),
            "csf": float(np.mean(image.data[np.isin(lab, (8, 9))])),
        }

    t1 = means(subject.t1w, subject.labels_fixed)
    t2 = means(subject.t2w, subject.labels_moving)
    pd = means(subject.pdw, subject.labels_moving)
    assert t1["wm"] > t1["gm"] > t1["csf"]
    assert t2["csf"] > t2["gm"] > t2["wm"]
    assert pd["gm"] > pd["wm"]
    assert pd["gm"] > pd["csf"]
    # T2w and PDw share a grid but are different images.
    r = np.corrcoef(subject.t2w.data.ravel(), subject.pdw.data.ravel())[0, 1]
    assert r < 0.97


def test_field_inversion_solves_the_sampling_map() -> None:
    from mmreg.imaging.phantoms.brain import _eval_field, _invert_field, _random_field

    rng = np.random.default_rng(0)
    grid, field = _random_field(rng, np.zeros(3), np.full(3, 60.0), max_mm=4.0)
    pts = rng.uniform(0.0, 60.0, (50, 3))
    z = _invert_field(grid, field, pts)
    np.testing.assert_allclose(z + _eval_field(grid, field, z), pts, atol=1e-4)
    assert np.max(np.linalg.norm(z - pts, axis=1)) > 1.0
