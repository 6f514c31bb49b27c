"""Progress where jobs run: one log line per finished registration when nobody watches a bar."""

from __future__ import annotations

import re

from mmreg.bids_app.cli import main

from reliability_data import write_good_dataset


def test_one_line_per_finished_registration(tmp_path, capsys):
    bids = write_good_dataset(tmp_path / "bids", ("01", "02"))
    argv = [str(bids), str(tmp_path / "out"), "participant", "--methods", "identity,sitk-rigid"]
    assert main([*argv, "--worker", "debug"]) == 0
    err = capsys.readouterr().err  # not a terminal: no bar, log lines
    done = re.findall(r"registration (\d) of 4 done", err)
    assert done == ["1", "2", "3", "4"], err
    log = next((tmp_path / "out" / "logs").glob("*/mmreg.log")).read_text()
    assert "registration 4 of 4 done" in log
    assert " pydra" not in log  # third-party debug chatter only with -vv
    # A rerun finds everything in the work dir and says so.
    assert main([*argv, "--worker", "debug"]) == 0
    assert "4 of 4 registration(s) already in the work dir" in capsys.readouterr().err
