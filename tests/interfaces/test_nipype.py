"""The Nipype interfaces run as nodes of a real Nipype workflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("nipype")

import SimpleITK as sitk
from nipype import Node, Workflow
from traits.api import TraitError

from mmreg.imaging.image import Image, save_image
from mmreg.interfaces.nipype import ApplyTransform, Register
from mmreg.single import apply_transform_file

from factories import second_contrast, shift_image, smooth_head, write_pair

#: The moving image's content sits this far (RAS, mm) from the fixed image's.
SHIFT = np.array([4.5, -3.0, 2.5])
LPS = np.array([-1.0, -1.0, 1.0])  # ITK transform files are in LPS coordinates


def _labels(head: np.ndarray) -> np.ndarray:
    """Three tissue-like labels from the head's intensity."""
    return np.digitize(head, [0.15, 0.5, 0.7]).astype(np.int16)


@pytest.fixture
def pair(tmp_path: Path) -> dict[str, Path]:
    """A 32^3, 3 mm head (fixed) and its second contrast moved by ``SHIFT`` (moving)."""
    head = smooth_head((32, 32, 32), seed=0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -1.5 * 31
    fixed = Image(head, affine)
    moving = shift_image(Image(second_contrast(head), affine), SHIFT)
    files = write_pair(tmp_path / "bids", "01", fixed=fixed, moving=moving)
    anat = files["fixed"].parent
    files["fixed_labels"] = save_image(
        Image(_labels(head), affine), anat / "sub-01_space-T1w_dseg.nii.gz"
    )
    files["moving_labels"] = save_image(
        shift_image(Image(_labels(head), affine), SHIFT), anat / "sub-01_space-T2w_dseg.nii.gz"
    )
    return files


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / (np.sum(a) + np.sum(b)))


def _workflow(base_dir: Path, name: str) -> Workflow:
    wf = Workflow(name=name, base_dir=str(base_dir))
    wf.config["execution"]["crashdump_dir"] = str(base_dir)
    # Keep outputs no downstream node uses (nipype deletes them by default), to check them.
    wf.config["execution"]["remove_unnecessary_outputs"] = False
    return wf


def test_register_then_apply_in_a_workflow(pair: dict[str, Path], tmp_path: Path) -> None:
    reg = Node(
        Register(
            fixed_image=str(pair["fixed"]),
            moving_image=str(pair["moving"]),
            moving_labels=str(pair["moving_labels"]),
            method="sitk-rigid",
            seed=0,
            # No pre-alignment, so the method itself must find the shift.
            prealign="none",
            resolution=3.0,
            device="cpu",
        ),
        name="reg",
    )
    dseg = Node(
        ApplyTransform(
            input_image=str(pair["moving_labels"]),
            reference_image=str(pair["fixed"]),
            interpolation="nearest",
        ),
        name="dseg",
    )
    wf = _workflow(tmp_path / "work", "t2w_to_t1w")
    wf.connect(reg, "transform", dseg, "transform")
    graph = wf.run(plugin="Linear")
    results = {node.name: node.result.outputs for node in graph.nodes()}
    out, applied = results["reg"], results["dseg"]

    # Outputs live in the nodes' working directories.
    node_dir = tmp_path / "work" / "t2w_to_t1w" / "reg"
    assert Path(out.transform) == node_dir / "mmreg_xfm.txt"
    assert Path(out.warped_image).parent == node_dir
    assert out.runtime > 0

    # The warped image is on the fixed image's grid.
    fixed = nib.load(pair["fixed"])
    warped = nib.load(out.warped_image)
    assert warped.shape == fixed.shape
    np.testing.assert_allclose(warped.affine, fixed.affine, atol=1e-5)

    # The transform (fixed -> moving points, LPS) moves points near the head by SHIFT.
    tx = sitk.ReadTransform(out.transform)
    points = [np.array(p, float) for p in np.ndindex(3, 3, 3)]
    for p in points:
        lps = 15.0 * (p - 1)  # a 30 mm cube around the centre
        moved = np.array(tx.TransformPoint(tuple(lps)))
        np.testing.assert_allclose(moved - lps, LPS * SHIFT, atol=1.0)

    # The label maps overlap after registration, clearly better than before (identity).
    identity = tmp_path / "identity.txt"
    sitk.WriteTransform(sitk.AffineTransform(3), str(identity))
    before = apply_transform_file(
        identity, pair["moving_labels"], pair["fixed"], tmp_path / "before.nii.gz", labels=True
    )
    fixed_fg = np.asarray(nib.load(pair["fixed_labels"]).dataobj) > 0
    before_fg = np.asarray(nib.load(before).dataobj) > 0
    after = np.asarray(nib.load(applied.output_image).dataobj)
    assert _dice(fixed_fg, after > 0) > 0.97 > _dice(fixed_fg, before_fg) + 0.05

    # ApplyTransform equals the library call on the same transform, and Register's labels.
    expected = apply_transform_file(
        out.transform, pair["moving_labels"], pair["fixed"], tmp_path / "lib.nii.gz", labels=True
    )
    np.testing.assert_array_equal(after, np.asarray(nib.load(expected).dataobj))
    np.testing.assert_array_equal(after, np.asarray(nib.load(out.warped_labels).dataobj))
    assert after.dtype == np.int32
    assert Path(applied.output_image).name == "sub-01_space-T2w_dseg_trans.nii.gz"


def test_unknown_method_is_rejected_with_mmregs_message() -> None:
    with pytest.raises(TraitError, match=r"^unknown method 'no-such-method'; available") as exc:
        Register(method="no-such-method")
    assert "\n" not in str(exc.value)


def test_bad_method_fails_the_node_with_mmregs_message(
    pair: dict[str, Path], tmp_path: Path
) -> None:
    # A known name with a parameter it does not take: only mmreg's run-time check sees it.
    reg = Node(
        Register(
            fixed_image=str(pair["fixed"]),
            moving_image=str(pair["moving"]),
            method="sitk-rigid:bogus=1",
            device="cpu",
        ),
        name="reg",
    )
    wf = _workflow(tmp_path / "work", "bad")
    wf.add_nodes([reg])
    message = "method 'sitk-rigid' takes no parameters (got 'sitk-rigid:bogus=1')"
    with pytest.raises(Exception, match=r"UsageError") as exc:
        wf.run(plugin="Linear")
    assert f"mmreg.errors.UsageError: {message}" in str(exc.value)


def test_nipype_stays_optional() -> None:
    # In a fresh interpreter: the package imports without nipype; the module says what to do.
    code = (
        "import sys, mmreg.interfaces; print('nipype' in sys.modules)\n"
        "sys.modules['nipype'] = None  # as if it were not installed\n"
        "try:\n"
        "    import mmreg.interfaces.nipype\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "False", done.stderr
    assert lines[1].endswith("pip install 'mmreg[nipype]'"), done.stdout
