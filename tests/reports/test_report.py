"""The HTML report: self-contained, escaped, robust to missing images."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from markupsafe import escape

from mmreg.reports import html_report as report
from mmreg.reports.group import aggregate, run_group_level, summarise

# The fake output folder is shared with test_group; test modules are not importable by name
# under --import-mode=importlib, so load it from its file.
_spec = importlib.util.spec_from_file_location(
    "_mmreg_test_group_data", Path(__file__).with_name("test_group.py")
)
_group_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_group_tests)
ERROR, write_fake_output = _group_tests.ERROR, _group_tests.write_fake_output

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def _report(tmp_path: Path, **kwargs) -> str:
    bids, out = write_fake_output(tmp_path, images=True)
    paths = run_group_level(out, bids_dir=bids, **kwargs)
    return paths["report"].read_text(encoding="utf-8")


def test_report_contents(tmp_path: Path) -> None:
    text = _report(tmp_path)
    assert text.startswith("<!DOCTYPE html>")
    for name in ("ants-affine", "ants-syn", "sub-01", "sub-02", "sub-10", "0.750 ± 0.050"):
        assert name in text
    assert f'src="data:image/png;base64,{PNG_B64[:8]}' in text
    # The failure reason shows up escaped (as the templates escape), never as live markup.
    assert escape(ERROR) in text
    assert "<script>" not in text
    # Per subject: before + a figure per method where the warped image exists.
    # sub-01 and sub-10 have both; sub-02 has one failed method and one missing warped
    # image.
    sections = re.split(r'<h3 id="sub-', text)[1:]
    assert len(sections) == 3
    # Each aligned pair is shown twice: an edge overlay / checkerboard, and a before/after
    # flicker of two frames.
    flickers = [s.count('class="flicker"') for s in sections]
    assert flickers == [3, 1, 3]
    assert [s.count("<img ") - 2 * f for s, f in zip(sections, flickers, strict=True)] == [3, 1, 3]
    assert "warped image" in sections[1] and "not found" in sections[1]
    assert "Dice per label" in text and "WM" in text


def test_report_caps_subjects(tmp_path: Path) -> None:
    text = _report(tmp_path, max_subjects=1)
    assert "Figures for 1 of 3 subjects only" in text and "failures first" in text
    # The subject with a failed registration is the one shown, not the first label.
    assert text.count('<h3 id="sub-') == 1 and '<h3 id="sub-02">' in text


def test_report_without_bids_dir_or_images(tmp_path: Path) -> None:
    _, out = write_fake_output(tmp_path, images=False)
    df = aggregate(out)
    df["fixed_image"] = ""
    text = report.build_report(df, summarise(df), output_dir=out, bids_dir=None)
    assert "No figures: fixed image (T1w) not found" in text
    assert text.count('<h3 id="sub-') == 3


def test_report_reads_newest_config_and_extra_sections(tmp_path: Path) -> None:
    bids, out = write_fake_output(tmp_path, images=False)
    (out / "logs" / "run1").mkdir(parents=True)
    (out / "logs" / "run1" / "config.json").write_text(json.dumps({"methods": ["a&b"]}))
    paths = run_group_level(
        out, bids_dir=bids, extra_sections=[("Notes <1>", "<p id='extra'>hi</p>")]
    )
    text = paths["report"].read_text(encoding="utf-8")
    assert "logs/run1/config.json" in text
    assert escape('["a&b"]') in text
    assert "Notes &lt;1&gt;" in text and "<p id='extra'>hi</p>" in text


def test_report_escapes_labels_in_text_attributes_and_ids(tmp_path: Path) -> None:
    bids, out = write_fake_output(tmp_path, images=True)
    df = aggregate(out)
    evil = "<script>alert('x')</script>"
    sub01, sub02, sub10 = (df["subject"] == s for s in ("01", "02", "10"))
    df.loc[sub01, "method"] = df.loc[sub01, "method"] + evil  # tables, figure captions
    df.loc[sub02, "session"] = evil
    df.loc[sub10, "subject"] = "10" + evil  # heading and its anchor
    text = report.build_report(df, summarise(df), output_dir=out, bids_dir=bids)
    assert "<script" not in text
    shown = escape(evil)
    assert f"<td><b>ants-syn{shown}</b></td>" in text  # summary table
    assert f'alt="ants-syn{shown}: T2w warped"' in text  # overlay and flicker frame
    assert f"<figcaption>ants-syn{shown}: T2w warped</figcaption>" in text
    assert f'<p class="meta">ses-{shown}</p>' in text
    assert f'<h3 id="sub-10{shown}">sub-10{shown}</h3>' in text


def test_report_corrupt_image_is_a_note(tmp_path: Path) -> None:
    bids, out = write_fake_output(tmp_path, images=True)
    (bids / "sub-10" / "anat" / "sub-10_T1w.nii.gz").write_bytes(b"not an image")
    text = run_group_level(out, bids_dir=bids)["report"].read_text(encoding="utf-8")
    assert "No figures: fixed image (T1w)" in text


def test_images_come_from_the_paths_the_table_stores(tmp_path: Path) -> None:
    anat = tmp_path / "sub-01" / "ses-a" / "anat"
    anat.mkdir(parents=True)
    image = anat / "sub-01_ses-a_acq-hi_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), image)
    row = {
        "subject": "01",
        "fixed": "T1wHi",
        "fixed_image": "bids:raw:sub-01/ses-a/anat/sub-01_ses-a_acq-hi_T1w.nii.gz",
        "moving_image": "bids:raw:sub-01/ses-a/anat/sub-01_ses-a_T2w.nii.gz",
        "warped": "sub-01/ses-a/anat/w.nii.gz",
    }
    assert report.find_source_image(row, "fixed", tmp_path) == image
    assert report.find_source_image({**row, "fixed_image": image.as_uri()}, "fixed", None) == (
        image
    )
    assert report.find_source_image(row, "moving", tmp_path) is None  # not on disk
    # Nothing is searched for by name: a row without the column has no image.
    assert report.find_source_image({**row, "fixed_image": ""}, "fixed", tmp_path) is None
    assert report.warped_path(row, tmp_path / "out") == (
        tmp_path / "out" / "sub-01/ses-a/anat/w.nii.gz"
    )
    assert report.warped_path({**row, "warped": float("nan")}, tmp_path) is None


def test_empty_results_still_render(tmp_path: Path) -> None:
    df = pd.DataFrame(columns=["subject", "session", "fixed", "moving", "method", "status"])
    text = report.build_report(df, summarise(df), output_dir=tmp_path)
    assert "No evaluation rows" in text


def test_subject_reports_are_written_and_linked_from_the_group_report(tmp_path: Path) -> None:
    from mmreg.reports.group import subject_report_path, write_subject_report

    bids, out = write_fake_output(tmp_path, images=True)
    page = write_subject_report(out, "01", bids_dir=bids).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "sub-01" in page
    # Only this subject's rows and figures, all of them.
    assert re.findall(r'<h3 id="sub-([^"]+)"', page) == ["01"]
    assert page.count('class="flicker"') == 3
    assert "sub-02" not in page
    group = run_group_level(out, bids_dir=bids, max_subjects=1)["report"].read_text("utf-8")
    # Linked from group/, including a subject without figures in the (capped) group page.
    assert '<a href="../sub-01.html">sub-01</a>' in group
    assert "../sub-02.html" not in group  # not written
    assert subject_report_path(out, "01") == out / "sub-01.html"


def test_participant_level_writes_each_subject_report(tmp_path: Path) -> None:
    from mmreg.bids_app.cli import main

    from reliability_data import write_good_dataset

    bids = write_good_dataset(tmp_path / "bids", ("01", "02"))
    out = tmp_path / "out"
    argv = [str(bids), str(out), "participant", "--methods", "identity,sitk-rigid"]
    assert main([*argv, "--worker", "debug", "--work-dir", str(tmp_path / "work")]) == 0
    for subject in ("01", "02"):
        page = (out / f"sub-{subject}.html").read_text(encoding="utf-8")
        assert f'<h3 id="sub-{subject}">' in page and "sitk-rigid" in page
        assert page.count('class="flicker"') == 3  # before, then one per method
    assert "sub-*.html" in (out / ".bidsignore").read_text()
