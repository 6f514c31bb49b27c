"""Whole-body phantom: determinism, grids, anatomy, labels, landmarks and the true pose."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from mmreg.imaging.image import Image
from mmreg.imaging.phantoms.wholebody import (
    LANDMARK_NAMES,
    WHOLEBODY_LABELS,
    Capsule,
    Ellipsoid,
    Tissue,
    WholeBodySettings,
    WholeBodySubject,
    generate_wholebody_subject,
)

# 4.4 mm grids: the same anatomy at an eighth of the voxels, so the tests stay fast.
SMALL = WholeBodySettings(
    mr_spacing_mm=4.4, mr_size=(112, 251), dxa_spacing_mm=4.4, dxa_size=(150, 400)
)
SEED = 5


@pytest.fixture(scope="module")
def subject() -> WholeBodySubject:
    return generate_wholebody_subject(SEED, settings=SMALL)


def _at(image: Image, points: np.ndarray, order: int = 0) -> np.ndarray:
    ijk = image.grid.world_to_voxel(np.atleast_2d(points)).T
    return ndimage.map_coordinates(image.data, ijk, order=order, mode="constant")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1)


def test_same_seed_same_subject_other_seed_differs(subject: WholeBodySubject) -> None:
    again = generate_wholebody_subject(SEED, settings=SMALL)
    for name in ("dxa_bone", "dxa_tissue", "mr_fat", "mr_water", "dxa_labels", "mr_labels"):
        a, b = getattr(subject, name), getattr(again, name)
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
        np.testing.assert_array_equal(a.affine, b.affine, err_msg=name)
    np.testing.assert_array_equal(subject.dxa_to_mr_slice, again.dxa_to_mr_slice)
    other = generate_wholebody_subject(SEED + 1, settings=SMALL)
    assert other.metadata["height_mm"] != subject.metadata["height_mm"]
    assert not np.allclose(other.dxa_to_mr_slice, subject.dxa_to_mr_slice)


def test_grids_types_and_fields_of_view(subject: WholeBodySubject) -> None:
    # DXA: 2D, (left-right, superior-inferior), world z = 0.
    assert subject.dxa_bone.shape == SMALL.dxa_size == subject.dxa_tissue.shape
    assert subject.dxa_bone.spacing == pytest.approx((4.4, 4.4))
    corners = subject.dxa_bone.grid.voxel_to_world([[0, 0], [149, 399]])
    np.testing.assert_allclose(corners[:, 2], 0.0)
    # MR: 3D, LAS on disk, neck-to-knee field of view of the requested size.
    fat, water = subject.mr_fat, subject.mr_water
    assert fat.ndim == 3 and fat.shape == water.shape
    assert (fat.shape[0], fat.shape[2]) == SMALL.mr_size
    np.testing.assert_array_equal(fat.affine, water.affine)
    assert fat.affine[0, 0] < 0 and fat.spacing == pytest.approx((4.4,) * 3)
    for img in (subject.dxa_bone, subject.dxa_tissue, fat, water):
        assert img.data.dtype == np.float32 and np.all(np.isfinite(img.data))
        assert img.data.min() >= 0
    assert subject.dxa_labels.data.dtype == subject.mr_labels.data.dtype == np.int32
    assert subject.mr_tissues.data.dtype == np.uint8
    # The DXA shows the whole body (head to feet): tissue at both ends of the body axis,
    # while the MR stops above the head and below the knees.
    profile = subject.dxa_tissue.data.sum(axis=0)
    body = np.flatnonzero(profile > 0.05 * profile.max())
    height = (body[-1] - body[0]) * 4.4
    assert height == pytest.approx(subject.metadata["height_mm"], rel=0.06)
    assert subject.mr_fat.shape[2] * 4.4 < 0.75 * subject.metadata["height_mm"]


def test_evaluation_labels(subject: WholeBodySubject) -> None:
    assert set(WHOLEBODY_LABELS) == {0, 1, 2, 3}
    for labels in (subject.dxa_labels, subject.mr_labels):
        assert set(np.unique(labels.data)) == set(WHOLEBODY_LABELS)
    # The 3D spine is one connected column; the cavity lies between the hips.
    _, n = ndimage.label(subject.mr_labels.data == 1)
    assert n == 1
    hips = np.array([subject.landmarks_mr[f"femoral_head_{s}"] for s in ("left", "right")])
    cavity = subject.mr_labels.grid.voxel_to_world(np.argwhere(subject.mr_labels.data == 3))
    assert np.all(cavity[:, 0] > hips[:, 0].min()) and np.all(cavity[:, 0] < hips[:, 0].max())


def test_tissue_contrasts(subject: WholeBodySubject) -> None:
    tissue = subject.mr_tissues.data
    fat, water = subject.mr_fat.data, subject.mr_water.data

    def mean(image: np.ndarray, t: Tissue) -> float:
        return float(image[tissue == t].mean())

    assert mean(fat, Tissue.FAT) > 3 * mean(fat, Tissue.MUSCLE)
    assert mean(water, Tissue.MUSCLE) > 3 * mean(water, Tissue.FAT)
    for channel in (fat, water):
        assert mean(channel, Tissue.LUNG) < 0.2 * max(
            mean(channel, Tissue.FAT), mean(channel, Tissue.MUSCLE)
        )
    # Vertebral (red) marrow is a fat-water mix; long-bone (yellow) marrow mostly fat.
    red = mean(fat, Tissue.RED_MARROW) / (
        mean(fat, Tissue.RED_MARROW) + mean(water, Tissue.RED_MARROW)
    )
    yellow = mean(fat, Tissue.YELLOW_MARROW) / (
        mean(fat, Tissue.YELLOW_MARROW) + mean(water, Tissue.YELLOW_MARROW)
    )
    assert 0.45 < red < 0.75 < yellow
    # DXA: the bone channel is high over the skeleton only; the tissue channel sees the
    # lungs as less dense than the abdomen below them.
    bone, labels = subject.dxa_bone.data, subject.dxa_labels.data
    assert np.median(bone[labels == 1]) > 10 * np.median(bone[(labels == 0) & (bone > 0)])
    lm = subject.landmarks_dxa
    chest = np.mean([lm["humeral_head_left"], lm["humeral_head_right"]], axis=0)
    pelvis = np.mean([lm["femoral_head_left"], lm["femoral_head_right"]], axis=0)
    offset = np.array([70.0, 0.0, 0.0])  # beside the spine
    lung = chest + (pelvis - chest) * 0.25 + offset
    belly = chest + (pelvis - chest) * 0.75 + offset
    assert _at(subject.dxa_tissue, lung, 1)[0] < 0.8 * _at(subject.dxa_tissue, belly, 1)[0]


def test_landmarks_sit_on_the_anatomy(subject: WholeBodySubject) -> None:
    assert list(subject.landmarks_dxa) == list(LANDMARK_NAMES) == list(subject.landmarks_mr)
    bone = (Tissue.CORTICAL, Tissue.YELLOW_MARROW)
    for name in LANDMARK_NAMES[:4]:
        # Joint centres: inside the femoral or humeral head in the MR (if in the field of
        # view), and over bright bone in the DXA.
        if np.all(subject.mr_tissues.grid.world_to_voxel(subject.landmarks_mr[name]) >= 0):
            assert _at(subject.mr_tissues, subject.landmarks_mr[name])[0] in bone, name
        assert _at(subject.dxa_bone, subject.landmarks_dxa[name], 1)[0] > 0.4, name
    # S1: at the bottom of the vertebral column, on top of the sacrum.
    spine = subject.mr_labels.grid.voxel_to_world(np.argwhere(subject.mr_labels.data == 1))
    s1 = subject.landmarks_mr["s1"]
    assert abs(s1[2] - spine[:, 2].min()) < 10.0
    below = s1 + np.array([0.0, -10.0, -12.0])
    assert _at(subject.mr_labels, below)[0] == 2  # sacrum: pelvis label


def test_true_transform_is_the_coronal_rigid_pose(subject: WholeBodySubject) -> None:
    m = subject.dxa_to_mr_slice
    rot = m[:2, :2]
    np.testing.assert_allclose(rot @ rot.T, np.eye(2), atol=1e-12)
    angle = np.degrees(np.arctan2(rot[0, 1], rot[0, 0]))
    assert abs(angle) == pytest.approx(abs(subject.metadata["mr_rotation_deg"]))
    assert SMALL.max_rotation_deg / 2 <= abs(angle) <= SMALL.max_rotation_deg
    np.testing.assert_array_equal(m[2], [0, 0, 1, 0])
    dxa = np.array([subject.landmarks_dxa[n] for n in LANDMARK_NAMES])
    mr = np.array([subject.landmarks_mr_slice[n] for n in LANDMARK_NAMES])
    # The trunk's landmarks follow the rigid map exactly; the humeral heads move with
    # the shoulders, by at most the shoulder shift (height, and half of it sideways).
    err = subject.dxa_to_mr_slice_points(dxa) - mr
    trunk = [i for i, n in enumerate(LANDMARK_NAMES) if not n.startswith("humeral")]
    arms = [i for i, n in enumerate(LANDMARK_NAMES) if n.startswith("humeral")]
    np.testing.assert_allclose(err[trunk], 0.0, atol=1e-9)
    bound = np.hypot(SMALL.max_shoulder_mm, 0.5 * SMALL.max_shoulder_mm)
    assert np.all(np.linalg.norm(err[arms], axis=1) <= bound + 1e-9)
    assert np.linalg.norm(err[arms], axis=1).max() > 0.5  # not rigid: best rigid error > 0
    # The 3D map carries the DXA frame into the MR world; its coronal part is the 2D map.
    m3 = subject.dxa_to_mr
    np.testing.assert_allclose(m3[np.ix_([0, 2], [0, 2])], rot)
    # Without it the landmarks are far apart: the pose is not trivial.
    assert np.max(np.linalg.norm(dxa - mr, axis=1)) > 30.0


def test_projection_and_slice_labels_agree_through_the_true_pose(
    subject: WholeBodySubject,
) -> None:
    # The DXA spine is the projection of the 3D spine: mapped into the MR world with the
    # true pose, it covers the MR spine's coronal footprint (its projection along AP).
    footprint = (subject.mr_labels.data == 1).any(axis=1)
    aff = subject.mr_labels.affine
    ijk = np.argwhere(footprint)
    world = np.stack([aff[0, 0] * ijk[:, 0] + aff[0, 3], aff[2, 2] * ijk[:, 1] + aff[2, 3]], 1)
    back = np.linalg.inv(subject.dxa_to_mr_slice)
    pts = np.c_[world, np.zeros(len(world))] @ back[:3, :3].T + back[:3, 3]
    hit = np.mean(_at(subject.dxa_labels, pts) == 1)
    assert hit > 0.9
    # The identity pose is clearly worse.
    assert np.mean(_at(subject.dxa_labels, np.c_[world, np.zeros(len(world))]) == 1) < hit - 0.15


def test_spine_path_runs_inside_the_spine(subject: WholeBodySubject) -> None:
    path = subject.spine_path_mr
    assert path.shape[1] == 3 and len(path) > 400
    # The neck-to-knee field of view may cut the top of the cervical spine.
    ijk = subject.mr_labels.grid.world_to_voxel(path)
    path = path[np.all((ijk >= 0) & (ijk <= np.array(subject.mr_labels.shape) - 1), axis=1)]
    assert len(path) > 400
    assert np.mean(_at(subject.mr_labels, path) == 1) > 0.98
    assert np.mean(np.isin(_at(subject.mr_tissues, path), [Tissue.RED_MARROW, Tissue.DISC])) > 0.9


def test_straight_spine_and_no_spine() -> None:
    straight = generate_wholebody_subject(
        3, settings=replace(SMALL, spine_curvature=0.0, coronal_curvature=0.0)
    )
    path = straight.spine_path_mr
    assert np.ptp(path[:, 1]) < 1e-6  # constant AP position: rotation is about AP
    # x follows z linearly (only the in-plane rotation tilts it).
    fit = np.polyfit(path[:, 2], path[:, 0], 1)
    assert np.max(np.abs(np.polyval(fit, path[:, 2]) - path[:, 0])) < 1e-6
    curved = generate_wholebody_subject(3, settings=SMALL).spine_path_mr
    assert np.ptp(curved[:, 1]) > 10.0
    none = generate_wholebody_subject(3, settings=replace(SMALL, spine=False))
    assert len(none.spine_path_mr) == 0
    assert 1 not in none.mr_labels.data and 1 not in none.dxa_labels.data
    assert (
        np.sum(none.mr_tissues.data == Tissue.RED_MARROW)
        < 0.01 * np.sum(straight.mr_tissues.data == Tissue.RED_MARROW) + 200
    )  # the sternum's marrow only


def test_subjects_vary_and_limbs_move() -> None:
    subjects = [generate_wholebody_subject(s, settings=SMALL) for s in range(4)]
    meta = [s.metadata for s in subjects]
    for key in ("height_mm", "build", "subcutaneous_fat_mm", "visceral_fat_fraction"):
        values = [m[key] for m in meta]
        assert np.ptp(values) > 0.05 * np.mean(values), key
    kyphosis = [m["spine_curvature_mm"]["kyphosis"] for m in meta]
    assert np.ptp(kyphosis) > 1.0
    for m in meta:
        moves = np.array([m["pose_mr_deg"][k] - m["pose_dxa_deg"][k] for k in m["pose_dxa_deg"]])
        assert np.all(np.abs(moves) <= SMALL.max_limb_deg + 1e-9)
        assert np.any(np.abs(moves) > 0.1)


def test_shapes_answer_inside_and_chord_consistently() -> None:
    # The DXA uses chords, the MR uses inside tests: both must describe the same solid.
    axes = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
    shapes = [
        Ellipsoid(np.array([1.0, 2.0, 3.0]), np.array([9.0, 5.0, 7.0]), axes),
        Capsule(np.array([-8.0, 1.0, -3.0]), np.array([7.0, 1.0, 9.0]), 4.0, 6.0),
    ]
    y = np.arange(-30.0, 30.0, 0.05)[None, :, None]
    x = np.linspace(-10, 10, 7)[:, None, None]
    z = np.linspace(-6, 12, 5)[None, None, :]
    for shape in shapes:
        counted = shape.inside(x, y, z).sum(axis=1) * 0.05
        chord = shape.chord(x[:, 0, :], z[:, 0, :])
        np.testing.assert_allclose(counted, chord, atol=0.15)
        assert chord.max() > 5.0


def test_generation_takes_under_a_second_of_cpu() -> None:
    generate_wholebody_subject(0)  # warm up imports and caches
    start = time.process_time()
    subject = generate_wholebody_subject(1)
    cpu = time.process_time() - start
    assert subject.mr_fat.shape[0::2] == (224, 501)
    # About 0.5 s on an idle core; the margin absorbs a loaded machine.
    assert cpu < 2.0


def test_slice_resampling_is_linear_interpolation() -> None:
    from mmreg.imaging.phantoms.wholebody.mr import upsample_z

    rng = np.random.default_rng(0)
    acquired = rng.random((3, 4, 9)).astype(np.float32)
    for factor in (1, 2, 3):
        n = 8 * factor + 1
        out = upsample_z(acquired, factor, n)
        z = np.arange(n) / factor
        want = np.interp(z, np.arange(9), acquired[1, 2])
        np.testing.assert_allclose(out[1, 2], want, atol=1e-6)


def test_large_rotations_turn_the_mr_over_the_full_circle() -> None:
    angles = [
        generate_wholebody_subject(s, settings=replace(SMALL, large_rotations=True)).metadata[
            "mr_rotation_deg"
        ]
        for s in range(6)
    ]
    assert max(abs(a) for a in angles) > 30.0 and all(abs(a) <= 180.0 for a in angles)
