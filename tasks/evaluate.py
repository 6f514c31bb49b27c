"""Pydra task: warp the original moving image and measure the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fileformats.application import Json

from mmreg import notices
from mmreg.imaging.groundtruth import load_ground_truth
from mmreg.imaging.image import save_image
from mmreg.imaging.transform import Transform
from mmreg.pipeline import Failure, clean_row, evaluate, method_columns
from mmreg.tasks._manifest import read_manifest
from mmreg.tasks.define import task


@task(outputs=["row"])
def EvaluatePair(
    pair: dict,
    result: Json,
    label_table: str = "",
    coronal_slice: bool = False,
    code: str = "",
) -> dict:
    """One evaluation row for a (pair, method), with the warped image's path.

    Args:
        pair: The pair record, with ground-truth paths where they exist.
        result: Manifest from :func:`RegisterPair`.
        label_table: ``dseg.tsv`` naming the labels, or empty.
        coronal_slice: A 3D side is its mid-coronal slice (as in ``PreparePair``).
        code: Code fingerprint; only here so a code change invalidates the cache.

    Returns:
        row: The CSV row (contract columns and per-label columns) plus private
            ``_warped``/``_transform``/``_traceback``/``_label_maps``/``_midcoronal``
            entries for the writer.
    """
    del code
    upstream = read_manifest(result)
    row: dict[str, Any] = {
        "method": upstream.get("method", ""),
        "status": upstream["status"],
        "error": upstream.get("error", ""),
        "runtime_s": upstream.get("runtime_s"),
        "_traceback": upstream.get("traceback", ""),
    }
    upstream_warnings = upstream.get("warnings", [])
    if upstream["status"] != "ok":
        return {**row, "warnings": "; ".join(upstream_warnings)}
    try:
        transform = Transform.read(upstream["transform"])
        ground_truth = load_ground_truth(
            fixed_labels=pair.get("fixed_dseg"),
            moving_labels=pair.get("moving_dseg"),
            fixed_landmarks=pair.get("fixed_landmarks"),
            moving_landmarks=pair.get("moving_landmarks"),
            label_table=label_table or None,
            fixed_image=pair["fixed"],
            moving_image=pair["moving"],
        )
        warped, metrics = evaluate(
            pair["fixed"], pair["moving"], transform, ground_truth, coronal_slice=coronal_slice
        )
        warped_path = save_image(warped, Path.cwd() / "warped.nii.gz")
    except Exception as exc:
        failure = Failure.from_exception(exc)
        row.update(status="failed", error=failure.reason, _traceback=failure.traceback)
        return {**row, "warnings": "; ".join(notices.merge(upstream_warnings, notices.current()))}
    row.update(metrics)
    row.update(method_columns(upstream.get("extras") or {}))
    row["warnings"] = "; ".join(notices.merge(upstream_warnings, notices.current()))
    row.update(
        _warped=str(warped_path),
        _transform=upstream["transform"],
        _label_maps=upstream.get("label_maps", {}),
        _midcoronal=upstream.get("midcoronal", {}),
        extras=upstream.get("extras", {}),
    )
    return clean_row(row)
