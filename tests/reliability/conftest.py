"""Fixtures shared by the reliability probes."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability_data import write_good_dataset


@pytest.fixture
def good_dataset(tmp_path: Path) -> Path:
    return write_good_dataset(tmp_path / "bids", ("01", "02"))
