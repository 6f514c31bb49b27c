"""Transform: composition, resampling, Jacobians, and ITK/ANTs file round trips."""

from __future__ import annotations

from pathlib import Path

import ants
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from mmreg.errors import TransformError
from mmreg.imaging import itk_space
from mmreg.imaging.image import Grid, Image
from mmreg.imaging.transform import AffineStep, FieldStep, Transform

# --------------------------------------------------------------------------- helpers


def rigid(angles, shift) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    m[:3, 3] = shift
    return m


def oblique_affine() -> np.ndarray:
    aff = np.eye(4)
    rot = Rotation.from_euler("xyz", [15, -20, 30], degrees=True).as_matrix()
    aff[:3, :3] = rot @ np.diag([1.1, -0.9, 1.3])
    aff[:3, 3] = [-17.0, 14.0, -20.0]
    return aff


def smooth_image(shape=(32, 32, 32), affine=None, seed=0, sigma=3.0) -> Image:
    rng = np.random.default_rng(seed)
    data = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    data = (data - data.min()) / np.ptp(data)
    return Image(data.astype(np.float32), oblique_affine() if affine is None else affine)


def smooth_field(grid: Grid, amplitude=3.0, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.standard_normal((*grid.shape, 3)), (3,) * grid.ndim + (0,))
    v *= amplitude / np.abs(v).max()
    if grid.ndim == 2:
        v[..., 2] = 0.0
    return v


def field_grid() -> Grid:
    aff = np.diag([2.5, 2.5, 2.5, 1.0])
    aff[:3, 3] = -22.0
    return Grid((18, 18, 18), aff)


def deformable() -> Transform:
    grid = field_grid()
    return Transform(
        (FieldStep(grid, smooth_field(grid)), AffineStep(rigid([6, -4, 9], [2, -3, 1.5])))
    )


def sitk_map(tx: sitk.Transform, pts: np.ndarray) -> np.ndarray:
    """Map RAS points with an LPS SimpleITK transform."""
    n = tx.GetDimension()
    lps = itk_space.ras_to_lps_points(pts)
    out = lps.copy()
    out[:, :n] = [tx.TransformPoint(tuple(p[:n])) for p in lps]
    return itk_space.lps_to_ras_points(out)


def ants_map(tx, pts: np.ndarray) -> np.ndarray:
    n = tx.dimension
    lps = itk_space.ras_to_lps_points(pts)
    out = lps.copy()
    out[:, :n] = [tx.apply_to_point(tuple(p[:n])) for p in lps]
    return itk_space.lps_to_ras_points(out)


def ants_apply(path: Path, moving: Image, reference: Image, interpolator="linear") -> Image:
    warped = ants.apply_transforms(
        fixed=itk_space.image_to_ants(reference),
        moving=itk_space.image_to_ants(moving),
        transformlist=[str(path)],
        interpolator=interpolator,
    )
    return itk_space.ants_to_image(warped, z_from=reference.affine)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def images() -> tuple[Image, Image]:
    """Moving (oblique) and reference (axis-aligned, other spacing) images."""
    moving = smooth_image()
    ref_aff = np.diag([1.25, 1.25, 1.25, 1.0])
    ref_aff[:3, 3] = -18.0
    reference = smooth_image((28, 28, 28), ref_aff, seed=3)
    return moving, reference


# --------------------------------------------------------------------------- basics


def test_identity_and_from_affine():
    pts = np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 9.0]])
    assert np.allclose(Transform.identity().map_points(pts), pts)
    assert Transform.identity().is_linear
    m = rigid([0, 0, 90], [10, 0, 0])
    # Rotation by 90 degrees about z: (1, 2, 3) -> (-2, 1, 3), then +10 in x.
    assert np.allclose(Transform.from_affine(m).map_points(pts[:1]), [[8.0, 1.0, 3.0]])
    assert np.allclose(Transform.from_affine(m).as_affine(), m)


def test_then_order_and_merging():
    a = rigid([0, 0, 90], [0, 0, 0])
    b = rigid([0, 0, 0], [5, 0, 0])
    ta, tb = Transform.from_affine(a), Transform.from_affine(b)
    # x -> b(a(x)): rotate, then shift.
    assert np.allclose(ta.then(tb).map_points([[1.0, 0, 0]]), [[5.0, 1.0, 0.0]])
    assert np.allclose(tb.then(ta).map_points([[1.0, 0, 0]]), [[0.0, 6.0, 0.0]])
    assert len(ta.then(tb).steps) == 1
    assert np.allclose(ta.then(tb).as_affine(), b @ a)
    d = deformable()
    assert not d.is_linear and len(ta.then(d).steps) == 3
    assert len(d.then(ta).steps) == 2  # the trailing affines merge
    with pytest.raises(TransformError):
        d.as_affine()


def test_then_matches_sitk_composite(rng):
    """Our A.then(B) is ITK CompositeTransform([B, A]): the last added acts first."""
    a = Transform.from_affine(rigid([20, 0, -10], [4, 0, -2]))
    b = deformable()
    pts = rng.uniform(-20, 20, size=(40, 3))
    composite = sitk.CompositeTransform([b.to_sitk(), a.to_sitk()])
    ours = a.then(b).map_points(pts)
    assert np.allclose(sitk_map(composite, pts), ours, atol=1e-8)
    assert np.allclose(sitk_map(a.then(b).to_sitk(), pts), ours, atol=1e-8)
    assert not np.allclose(b.then(a).map_points(pts), ours, atol=1e-2)
    # Round trip through sitk keeps order and types.
    back = Transform.from_sitk(a.then(b).to_sitk())
    assert [type(s) for s in back.steps] == [AffineStep, FieldStep, AffineStep]
    assert np.allclose(back.map_points(pts), ours, atol=1e-8)


def test_ants_transformlist_order(tmp_path, images):
    """ants.apply_transforms([t0, t1]) pulls through x -> t1(t0(x)), i.e. t0.then(t1)."""
    moving, reference = images
    t0 = Transform.from_affine(rigid([25, 0, 0], [0, 6, 0]))
    t1 = Transform.from_affine(rigid([0, 0, -30], [-5, 0, 2]))
    p0, p1 = t0.write(tmp_path / "t0.mat"), t1.write(tmp_path / "t1.mat")
    warped = ants.apply_transforms(
        fixed=itk_space.image_to_ants(reference),
        moving=itk_space.image_to_ants(moving),
        transformlist=[str(p0), str(p1)],
        whichtoinvert=[False, False],
    )
    theirs = itk_space.ants_to_image(warped).data
    assert corr(theirs, t0.then(t1).apply(moving, reference).data) >= 0.999
    assert corr(theirs, t1.then(t0).apply(moving, reference).data) < 0.9
    combined = Transform.from_ants_files([p0, p1], ndim=3)
    assert np.allclose(combined.as_affine(), t0.then(t1).as_affine(), atol=1e-6)


@pytest.mark.parametrize(
    "tx_factory",
    [
        lambda: sitk.Euler3DTransform((1, 2, 3), 0.1, -0.2, 0.3, (4, 5, 6)),
        lambda: sitk.Similarity3DTransform(1.3, (0, 0, 1), 0.4, (1, 2, 3), (7, 8, 9)),
        lambda: sitk.VersorRigid3DTransform((0, 1, 0), 0.5, (1, 1, 1), (2, 0, 3)),
        lambda: sitk.TranslationTransform(3, (1.0, -2.0, 3.0)),
        lambda: sitk.ScaleTransform(3, (1.1, 0.9, 1.2)),
        lambda: sitk.ScaleSkewVersor3DTransform(
            (1.1, 0.9, 1.0), (0.1, 0, 0, 0, 0.05, 0), (0, 0, 1), 0.3, (2, 2, 2), (1, 0, 0)
        ),
        lambda: sitk.Euler2DTransform((1.0, 2.0), 0.3, (3.0, -1.0)),
        lambda: sitk.Similarity2DTransform(0.8, 0.2, (1.0, 1.0), (0.0, 2.0)),
    ],
)
def test_from_sitk_linear_types(tx_factory, rng):
    tx = tx_factory()
    ours = Transform.from_sitk(tx)
    assert ours.is_linear and len(ours.steps) == 1 and ours.ndim == tx.GetDimension()
    pts = rng.uniform(-20, 20, size=(10, 3))
    if ours.ndim == 2:
        pts[:, 2] = 0.0
    assert np.allclose(ours.map_points(pts), sitk_map(tx, pts), atol=1e-9)


# --------------------------------------------------------------------------- resampling


def test_map_points_consistent_with_apply():
    """A bright dot in the moving image lands where map_points says."""
    moving = smooth_image()
    ref_aff = np.diag([1.5, 1.5, 1.5, 1.0])
    ref_aff[:3, 3] = -15.0
    ref = Grid((20, 20, 20), ref_aff)
    for t in (Transform.from_affine(rigid([10, -5, 20], [3, 1, -2])), deformable()):
        p = ref.voxel_to_world([[9, 11, 8]])
        q = t.map_points(p)
        dot = np.rint(moving.grid.world_to_voxel(q)[0]).astype(int)
        data = np.zeros(moving.shape, np.int32)
        data[tuple(dot)] = 1
        warped = t.apply(moving.with_data(data), ref, interpolation="nearest")
        assert warped.data[9, 11, 8] == 1
        hits = np.argwhere(warped.data == 1)
        mapped = moving.grid.world_to_voxel(t.map_points(ref.voxel_to_world(hits)))
        assert np.all(np.abs(mapped - dot) <= 0.5 + 1e-9)
        linear = t.apply(moving.with_data(data.astype(np.float32)), ref)
        assert linear.data[9, 11, 8] > 0.1
        assert np.unravel_index(np.argmax(linear.data), ref.shape) in {tuple(h) for h in hits}


def test_apply_identity_and_fill(images):
    moving, _ = images
    same = Transform.identity().apply(moving, moving)
    assert same.data.dtype == np.float32 and np.allclose(same.data, moving.data)
    far = Transform.from_affine(rigid([0, 0, 0], [1000, 0, 0]))
    assert np.all(far.apply(moving, moving, fill=-7.0).data == -7.0)


def test_nearest_keeps_label_values(images):
    moving, reference = images
    values = np.array([0, 3, 7, 1000], dtype=np.int32)
    labels = values[np.digitize(moving.data, [0.3, 0.5, 0.7])]
    t = Transform.from_affine(rigid([12, 0, -8], [2, 1, 0])).then(deformable())
    warped = t.apply(moving.with_data(labels), reference, interpolation="nearest")
    assert warped.data.dtype == np.int32
    assert set(np.unique(warped.data)) <= set(values.tolist())
    assert len(np.unique(warped.data)) == 4


# --------------------------------------------------------------------------- Jacobian


def test_jacobian_of_affine_is_det():
    m = rigid([10, 20, 30], [1, 2, 3]) @ np.diag([1.2, 0.9, 1.1, 1.0])
    grid = Grid((6, 7, 8), oblique_affine())
    jac = Transform.from_affine(m).jacobian_determinant(grid)
    assert jac.shape == (6, 7, 8) and np.allclose(jac, np.linalg.det(m[:3, :3]))


def test_jacobian_of_known_field():
    """u = (a sin(k x), b y, 0): det = (1 + a k cos(k x)) (1 + b)."""
    aff = np.diag([1.5, 2.0, 1.0, 1.0])
    aff[:3, 3] = [-20.0, -10.0, -5.0]
    grid = Grid((28, 12, 10), aff)
    world = grid.world_coordinates()
    a, k, b = 2.0, 0.15, -0.1
    vec = np.zeros((*grid.shape, 3))
    vec[..., 0] = a * np.sin(k * world[..., 0])
    vec[..., 1] = b * world[..., 1]
    t = Transform.from_field(grid, vec)
    jac = t.jacobian_determinant(grid)
    expected = (1 + a * k * np.cos(k * world[..., 0])) * (1 + b)
    inner = (slice(1, -1),) * 3
    assert np.allclose(jac[inner], expected[inner], atol=0.01)
    # Composition with an affine multiplies by its determinant.
    m = np.diag([1.3, 1.0, 0.8, 1.0])
    jac2 = t.then(Transform.from_affine(m)).jacobian_determinant(grid)
    assert np.allclose(jac2, jac * 1.3 * 0.8)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".txt", ".mat"])
def test_affine_file_round_trip_sitk_and_ants(tmp_path, images, suffix, rng):
    moving, reference = images
    t = Transform.from_affine(rigid([14, -9, 22], [4.0, -3.0, 2.5]) @ np.diag([1.1, 1, 0.95, 1]))
    path = t.write(tmp_path / f"xfm{suffix}")
    assert path.exists() and not list(tmp_path.glob(".*tmp*"))
    pts = rng.uniform(-20, 20, size=(20, 3))
    expected = t.map_points(pts)
    assert np.allclose(Transform.read(path).as_affine(), t.as_affine())
    assert np.allclose(sitk_map(sitk.ReadTransform(str(path)), pts), expected, atol=1e-8)
    assert np.allclose(ants_map(ants.read_transform(str(path)), pts), expected, atol=1e-4)
    ours = t.apply(moving, reference)
    theirs = ants_apply(path, moving, reference)
    assert np.allclose(theirs.affine, reference.affine, atol=1e-5)
    assert corr(ours.data, theirs.data) >= 0.99
    assert corr(ours.data, moving.data[:28, :28, :28]) < 0.9  # the transform is not trivial


def test_deformable_h5_round_trip_sitk_and_ants(tmp_path, images, rng):
    moving, reference = images
    t = deformable()
    path = t.write(tmp_path / "xfm.h5")
    pts = rng.uniform(-20, 20, size=(30, 3))
    expected = t.map_points(pts)
    back = Transform.read(path)
    assert [type(s) for s in back.steps] == [FieldStep, AffineStep]
    assert np.allclose(back.map_points(pts), expected, atol=1e-8)
    s_tx = sitk.ReadTransform(str(path))
    assert np.allclose(sitk_map(s_tx, pts), expected, atol=1e-8)
    assert np.allclose(ants_map(ants.read_transform(str(path)), pts), expected, atol=1e-3)
    ours = t.apply(moving, reference)
    assert corr(ours.data, ants_apply(path, moving, reference).data) >= 0.99
    # The field matters: dropping it changes the result.
    no_field = Transform((t.steps[1],)).apply(moving, reference)
    assert corr(ours.data, no_field.data) < 0.99


def test_deformable_h5_is_compressed_and_single_precision_when_exact(tmp_path, rng):
    import h5py

    grid = field_grid()
    # A field computed in float32 (as the learned methods' are) is stored as float32.
    single = smooth_field(grid).astype(np.float32).astype(np.float64)
    t = Transform((FieldStep(grid, single), AffineStep(rigid([6, -4, 9], [2, -3, 1.5]))))
    path = t.write(tmp_path / "xfm.h5")
    with h5py.File(path) as h5:
        params = h5["TransformGroup/2/TransformParameters"]
        assert params.compression == "gzip" and params.dtype == np.float32
        assert h5["TransformGroup/1/TransformParameters"].dtype == np.float64  # the affine
    pts = rng.uniform(-20, 20, size=(30, 3))
    expected = t.map_points(pts)
    assert np.allclose(Transform.read(path).map_points(pts), expected, atol=1e-8)
    assert np.allclose(sitk_map(sitk.ReadTransform(str(path)), pts), expected, atol=1e-8)
    assert np.allclose(ants_map(ants.read_transform(str(path)), pts), expected, atol=1e-3)
    # A float64 field keeps its precision (compressed all the same).
    path64 = deformable().write(tmp_path / "xfm64.h5")
    with h5py.File(path64) as h5:
        params = h5["TransformGroup/2/TransformParameters"]
        assert params.compression == "gzip" and params.dtype == np.float64
    assert path.stat().st_size < path64.stat().st_size


def test_nitransforms_reads_our_files(tmp_path, rng):
    """NiPreps' nitransforms (fMRIPrep's transform library) maps points as we do."""
    nt = pytest.importorskip("nitransforms")
    pts = rng.uniform(-15, 15, size=(20, 3))
    affine = Transform.from_affine(rigid([10, -5, 20], [3.0, -2.0, 1.0]))
    linear = nt.linear.load(str(affine.write(tmp_path / "xfm.txt")), fmt="itk")
    assert np.allclose(linear.map(pts), affine.map_points(pts), atol=1e-5)
    t = deformable()
    chain = nt.manip.load(str(t.write(tmp_path / "xfm.h5")), fmt="itk")
    # nitransforms interpolates the field with splines, ITK linearly: within 0.1 mm.
    assert np.allclose(chain.map(pts), t.map_points(pts), atol=0.1)


def test_linear_suffix_rejects_deformable(tmp_path):
    with pytest.raises(TransformError, match="h5"):
        deformable().write(tmp_path / "xfm.txt")
    with pytest.raises(TransformError, match="unsupported"):
        Transform.identity().write(tmp_path / "xfm.json")


def test_identity_h5(tmp_path):
    path = Transform.identity().write(tmp_path / "id.h5")
    assert np.allclose(Transform.read(path).as_affine(), np.eye(4))


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.h5", None, "not found"),
        ("empty.h5", b"", "empty"),
        ("empty.txt", b"", "empty"),
        ("garbage.h5", b"this is not hdf5\n" * 10, "unreadable transform file"),
        ("garbage.txt", b"garbage\nmore garbage\n", "unreadable transform file"),
        ("garbage.mat", b"\x00\x01garbage" * 20, "unreadable transform file"),
        ("garbage.nii.gz", b"garbage", "unreadable displacement field"),
        (
            "bspline.txt",
            b"#Insight Transform File V1.0\n#Transform 0\n"
            b"Transform: BSplineTransform_double_3_3\nParameters: 1 2\nFixedParameters: 1\n",
            "unreadable transform file",
        ),
    ],
)
def test_read_errors_are_one_line(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TransformError) as info:
        Transform.read(path)
    message = str(info.value)
    assert message.startswith(f"{name}: ") and reason in message
    assert "\n" not in message and len(message) < 200


def test_read_unsupported_type_and_wrong_ndim(tmp_path):
    bspline = sitk.BSplineTransform(3)
    bspline.SetTransformDomainMeshSize((2, 2, 2))
    sitk.WriteTransform(bspline, str(tmp_path / "b.h5"))
    with pytest.raises(TransformError, match=r"b\.h5: unsupported transform type BSpline"):
        Transform.read(tmp_path / "b.h5")
    Transform.identity(3).write(tmp_path / "a.txt")
    with pytest.raises(TransformError, match="3D transform where 2D is expected"):
        Transform.read(tmp_path / "a.txt", ndim=2)


def test_from_ants_registration(tmp_path):
    """A real SyN run: fwdtransforms [1Warp.nii.gz, 0GenericAffine.mat] reproduce warpedmovout."""
    fixed = smooth_image((24, 24, 24), np.diag([1.5, -1.2, 1.0, 1.0]), seed=5, sigma=2.5)
    moving = Transform.from_affine(rigid([0, 0, 4], [1.5, -1.0, 0.5])).apply(fixed, fixed)
    reg = ants.registration(
        itk_space.image_to_ants(fixed),
        itk_space.image_to_ants(moving),
        "SyN",
        outprefix=str(tmp_path / "r_"),
        reg_iterations=(10, 5),
        aff_iterations=(20, 10),
        aff_shrink_factors=(2, 1),
        aff_smoothing_sigmas=(1, 0),
    )
    paths = reg["fwdtransforms"]
    assert paths[0].endswith("Warp.nii.gz") and paths[1].endswith(".mat")
    t = Transform.from_ants_files(paths, ndim=3)
    assert [type(s) for s in t.steps] == [FieldStep, AffineStep]
    theirs = itk_space.ants_to_image(reg["warpedmovout"]).data
    assert corr(t.apply(moving, fixed).data, theirs) >= 0.999
    # And it survives our own .h5 round trip.
    again = Transform.read(t.write(tmp_path / "syn.h5"))
    assert corr(again.apply(moving, fixed).data, theirs) >= 0.999


# --------------------------------------------------------------------------- 2D


def test_2d_write_read_apply(tmp_path):
    aff = np.eye(4)
    aff[:2, :2] = Rotation.from_euler("z", 30, degrees=True).as_matrix()[:2, :2] @ np.diag(
        [1.2, -0.9]
    )
    aff[:3, 3] = [-20.0, 15.0, 0.0]
    moving = smooth_image((36, 40), aff, seed=7, sigma=2.5)
    ref = smooth_image((34, 34), seed=8)
    ref = Image(
        ref.data, np.array([[1.1, 0, 0, -18], [0, 1.1, 0, -18], [0, 0, 1, 0], [0, 0, 0, 1]])
    )
    m = np.eye(4)
    m[:2, :2] = Rotation.from_euler("z", -18, degrees=True).as_matrix()[:2, :2] * 1.05
    m[:2, 3] = [3.0, -2.0]
    linear = Transform.from_affine(m, ndim=2)
    fgrid = Grid(
        (16, 16), np.array([[2.5, 0, 0, -20], [0, 2.5, 0, -20], [0, 0, 1, 0], [0, 0, 0, 1]])
    )
    t2 = Transform.from_field(fgrid, smooth_field(fgrid, amplitude=2.5)[..., :2]).then(linear)
    assert t2.ndim == 2 and t2.steps[0].vectors.shape == (16, 16, 3)
    pts = np.random.default_rng(0).uniform(-15, 15, size=(20, 3))
    pts[:, 2] = 0.0
    for t, name in [(linear, "a.mat"), (linear, "a.txt"), (t2, "d.h5")]:
        path = t.write(tmp_path / name)
        s_tx = sitk.ReadTransform(str(path))
        assert s_tx.GetDimension() == 2
        assert np.allclose(sitk_map(s_tx, pts), t.map_points(pts), atol=1e-8)
        a_tx = ants.read_transform(str(path))
        assert a_tx.dimension == 2
        assert np.allclose(ants_map(a_tx, pts), t.map_points(pts), atol=1e-3)
        back = Transform.read(path, ndim=2)
        assert np.allclose(back.map_points(pts), t.map_points(pts), atol=1e-8)
        ours = t.apply(moving, ref)
        assert ours.shape == (34, 34)
        assert corr(ours.data, ants_apply(path, moving, ref).data) >= 0.99
    assert np.allclose(linear.jacobian_determinant(ref.grid), np.linalg.det(m[:3, :3]))
    jac = t2.jacobian_determinant(ref.grid)
    assert jac.shape == (34, 34) and np.all(jac > 0)
    # Mixing dimensions is an error, not a silent misuse.
    with pytest.raises(TransformError):
        linear.then(Transform.identity(3))
