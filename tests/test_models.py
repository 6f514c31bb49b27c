"""Checkpoints: written reproducibly, verified before and after loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmreg import models
from mmreg.errors import InputError


def _save(path: Path, value: float = 1.0) -> str:
    return models.save_checkpoint(
        path,
        method="demo",
        config={"channels": 2},
        state_dict={"w": torch.full((2, 3), value), "b": torch.zeros(2)},
        metadata={"seeds": [1, 2]},
    )


def test_round_trip_keeps_config_weights_and_metadata(tmp_path):
    path = tmp_path / "m.pt"
    digest = _save(path)
    ckpt = models.load_checkpoint(path, method="demo")
    assert ckpt.config == {"channels": 2}
    assert torch.equal(ckpt.state_dict["w"], torch.ones(2, 3))
    assert ckpt.metadata["seeds"] == [1, 2]
    assert ckpt.metadata["method"] == "demo"
    assert ckpt.sha256 == digest
    assert (tmp_path / "m.pt.sha256").read_text().split() == [digest, "m.pt"]


def test_same_weights_give_the_same_file(tmp_path):
    assert _save(tmp_path / "a.pt") == _save(tmp_path / "b.pt")
    assert _save(tmp_path / "c.pt", value=2.0) != _save(tmp_path / "a.pt")


def test_weights_digest_depends_on_names_and_values():
    a = models.weights_sha256({"w": torch.ones(2)})
    assert a == models.weights_sha256({"w": torch.ones(2)})
    assert a != models.weights_sha256({"v": torch.ones(2)})
    assert a != models.weights_sha256({"w": torch.ones(2, dtype=torch.float64)})
    assert a != models.weights_sha256({"w": torch.tensor([1.0, 1.5])})


def test_a_replaced_file_is_refused_before_loading(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    sidecar = (tmp_path / "m.pt.sha256").read_text()
    _save(path, value=3.0)
    (tmp_path / "m.pt.sha256").write_text(sidecar)  # the old digest
    with pytest.raises(InputError, match="sha256"):
        models.load_checkpoint(path, method="demo")


def test_tampered_weights_are_refused_even_without_a_sidecar(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    (tmp_path / "m.pt.sha256").unlink()
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["w"] += 1
    torch.save(payload, path)
    with pytest.raises(InputError, match="recorded digest"):
        models.load_checkpoint(path, method="demo")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04broken zip"])
def test_unreadable_files_give_one_line(tmp_path, content):
    path = tmp_path / "m.pt"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        models.load_checkpoint(path, method="demo")
    assert "\n" not in str(info.value)


def test_wrong_family_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    with pytest.raises(InputError, match="'demo' model, not a 'keymorph'"):
        models.load_checkpoint(path, method="keymorph")


def test_expected_digest_from_the_caller_wins(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    with pytest.raises(InputError, match="sha256"):
        models.load_checkpoint(path, method="demo", expected_sha256="0" * 64)


def test_verified_paths_notice_a_changed_file(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    record = {"demo": {"path": str(path), "sha256": models.sha256_file(path)}}
    assert models.verified_model_paths(record) == {"demo": str(path)}
    _save(path, value=5.0)
    with pytest.raises(InputError, match="changed since the run started"):
        models.verified_model_paths(record)


def test_resolve_model_names_the_option_for_a_missing_override(tmp_path):
    with pytest.raises(InputError, match="--model"):
        models.resolve_model("keymorph", tmp_path / "none.pt")


def test_shipped_weights_match_the_manifest():
    sums = models.MANIFEST
    if not sums.is_file():
        pytest.skip("no shipped weights in this checkout")
    for line in sums.read_text().splitlines():
        digest, name = line.split()
        assert models.sha256_file(models.MODEL_DIR / name) == digest
        assert models.shipped_sha256(models.MODEL_DIR / name) == digest
