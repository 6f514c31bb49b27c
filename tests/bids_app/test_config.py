"""The run configuration: defaults, JSON round trip, atomic save."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import mmreg
from mmreg.bids_app.config import Config


def _config(tmp_path: Path, **kw: object) -> Config:
    return Config(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", **kw)


def test_defaults(tmp_path: Path) -> None:
    c = _config(tmp_path)
    assert c.bids_dir == str(tmp_path / "bids")
    assert c.work_dir == str(tmp_path / "out" / "work")
    assert c.fixed == {"suffix": "T1w"}
    assert c.moving == ({"suffix": "T2w"},)
    assert (c.random_seed, c.device, c.resolution, c.prealign) == (0, "auto", 2.0, "auto")
    assert c.version == mmreg.__version__
    assert c.run_id and c.run_id != _config(tmp_path).run_id


def test_frozen(tmp_path: Path) -> None:
    c = _config(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.nprocs = 3  # type: ignore[misc]
    assert c.replace(nprocs=3).nprocs == 3 and c.nprocs == 1


def test_json_round_trip(tmp_path: Path) -> None:
    c = _config(
        tmp_path,
        participant_labels=("01", "02"),
        fixed={"suffix": "T1w", "acq": "mprage"},
        moving=({"suffix": "T2w"}, {"suffix": "US"}),
        ground_truth=tmp_path / "gt",
        methods=("ants-affine", "keymorph-affine+ants-syn"),
        max_pairs=4,
        mask=True,
    )
    text = c.to_json()
    json.loads(text)  # plain JSON
    assert Config.from_json(text) == c
    path = c.save(tmp_path / "logs" / "config.json")
    assert Config.load(path) == c
    assert not list(path.parent.glob(".*tmp*"))


def test_invalid_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _config(tmp_path, device="tpu")
    with pytest.raises(ValueError):
        _config(tmp_path, moving=())
    with pytest.raises(ValueError, match="unknown config field"):
        Config.from_dict({**_config(tmp_path).to_dict(), "typo": 1})
