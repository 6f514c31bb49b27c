"""Pydra task: warp the original moving image and measure the result."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fileformats.application import Json

from mmreg import notices
from mmreg.imaging.groundtruth import load_ground_truth
from mmreg.imaging.image import save_image
from mmreg.imaging.transform import Transform
from mmreg.pipeline import Failure, clean_row, evaluate, method_columns
from mmreg.records import PairRecord, ResultRow
from mmreg.tasks._manifest import Registered
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
        row: A :class:`mmreg.records.ResultRow` as JSON: status, metrics (contract and
            per-label columns) and the files the derivatives sink copies.
    """
    del code
    record = PairRecord.from_dict(pair)
    upstream = Registered.read(result.fspath)
    row = ResultRow(
        pair_id=record.pair_id,
        method=upstream.method,
        status=upstream.status,
        error=upstream.error,
        runtime_s=upstream.runtime_s,
        traceback=upstream.traceback,
    )
    upstream_warnings = list(upstream.warnings)
    if not row.ok:
        return replace(row, warnings="; ".join(upstream_warnings)).to_dict()
    try:
        transform = Transform.read(upstream.transform)
        ground_truth = load_ground_truth(
            fixed_labels=record.fixed_dseg,
            moving_labels=record.moving_dseg,
            fixed_landmarks=record.fixed_landmarks,
            moving_landmarks=record.moving_landmarks,
            label_table=label_table or None,
            fixed_image=record.fixed,
            moving_image=record.moving,
        )
        warped, metrics = evaluate(
            record.fixed, record.moving, transform, ground_truth, coronal_slice=coronal_slice
        )
        warped_path = save_image(warped, Path.cwd() / "warped.nii.gz")
    except Exception as exc:
        failure = Failure.from_exception(exc)
        warnings = "; ".join(notices.merge(upstream_warnings, notices.current()))
        return replace(
            row,
            status="failed",
            error=failure.reason,
            traceback=failure.traceback,
            warnings=warnings,
        ).to_dict()
    columns = clean_row({**metrics, **method_columns(upstream.extras)})
    return replace(
        row,
        metrics=columns,
        warnings="; ".join(notices.merge(upstream_warnings, notices.current())),
        warped=str(warped_path),
        transform=upstream.transform,
        label_maps=upstream.label_maps,
        midcoronal=upstream.midcoronal,
        extras=upstream.extras,
    ).to_dict()
