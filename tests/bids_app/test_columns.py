"""The CSV data dictionary: every column described, units where there are any."""

from __future__ import annotations

import json

from mmreg.bids_app.columns import describe_column, describe_columns
from mmreg.bids_app.derivatives import CONTRACT_COLUMNS, write_subject_csv


def test_contract_columns_have_their_own_descriptions():
    for column in CONTRACT_COLUMNS:
        text = describe_column(column)["Description"]
        assert "Method-specific" not in text, column
    assert describe_column("runtime_s")["Units"] == "s"
    assert describe_column("neg_jacobian_pct")["Units"] == "%"
    assert "Units" not in describe_column("dice_mean")


def test_patterns_prefixes_and_group_statistics():
    assert describe_column("hd95_Left_Thalamus_mm") == {
        "Description": "95th-percentile Hausdorff distance of label Left_Thalamus",
        "Units": "mm",
    }
    assert describe_column("tre_nasion_mm")["Description"].startswith("Error of landmark nasion")
    initial = describe_column("initial_dice_mean")["Description"]
    assert initial.startswith("Before registration (the inputs as they lie in world space")
    assert "after registration" not in initial
    assert describe_column("best_rigid_tre_mean_mm")["Units"] == "mm"
    sd = describe_column("runtime_s_sd")
    assert sd == {
        "Description": "Standard deviation over the group of: wall time of the registration "
        "itself (not preprocessing or I/O)",
        "Units": "s",
    }
    assert describe_column("inlier_fraction")["Description"].startswith("Method-specific")


def test_every_written_csv_gets_its_dictionary(tmp_path):
    rows = [{"subject": "01", "method": "identity", "status": "ok", "dice_csf": 0.5}]
    path = write_subject_csv(tmp_path, "01", rows)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    header = path.read_text().splitlines()[0].split(",")
    assert list(sidecar) == header
    assert sidecar == describe_columns(header)
