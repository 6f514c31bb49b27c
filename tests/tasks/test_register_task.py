"""RegisterPair: what goes into its cache key, and what it refuses."""

from __future__ import annotations

import json

from mmreg.tasks.register import RegisterPair


def _prepared(tmp_path):
    path = tmp_path / "prepared.json"
    path.write_text(json.dumps({"status": "ok"}))
    return path


def test_new_weights_or_new_code_never_reuse_a_cached_result(tmp_path):
    prepared = _prepared(tmp_path)

    def key(**kwargs):
        base = {"prepared": prepared, "method": "identity", "code": "0.1.0+abc"}
        return RegisterPair(**{**base, **kwargs})._hash

    weights = {"keymorph": {"path": "/models/km.pt", "sha256": "a" * 64}}
    assert key(models=weights) == key(models=weights)
    assert key(models=weights) != key(
        models={"keymorph": {"path": "/models/km.pt", "sha256": "b" * 64}}
    )
    assert key() != key(code="0.1.0+abd")
    assert key() != key(code="0.1.1+abc")


def test_weights_replaced_after_the_run_started_fail_the_row(tmp_path):
    """The task checks the file against the digest recorded when the run started."""
    import numpy as np

    from mmreg.imaging.image import Image, save_image
    from mmreg.imaging.transform import Transform

    data = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    image = save_image(Image(data, np.eye(4)), tmp_path / "i.nii.gz")
    initial = Transform.identity().write(tmp_path / "initial.txt")
    prepared = tmp_path / "prepared.json"
    prepared.write_text(
        json.dumps(
            {"status": "ok", "fixed": str(image), "moving": str(image), "initial": str(initial)}
        )
    )
    weights = tmp_path / "km.pt"
    weights.write_bytes(b"new weights")
    record = {"keymorph": {"path": str(weights), "sha256": "0" * 64}}
    outputs = RegisterPair(prepared=prepared, method="identity", models=record)(
        worker="debug", cache_root=tmp_path / "cache"
    )
    result = json.loads(outputs.result.read_text())
    assert result["status"] == "failed"
    assert "changed since the run started" in result["error"]
