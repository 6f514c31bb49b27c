"""Pydra task: the derivatives sink at the end of each subject (fMRIPrep's pattern).

A subject's results become BIDS derivatives, ``sub-<label>_evaluation.csv`` and
``sub-<label>.html`` as soon as its last (pair, method) is evaluated, while the other
subjects still run: a 1,000-subject run shows finished subjects on disk as it goes, and
nothing is read back out of the work dir after the engine returns.
"""

from __future__ import annotations

from pathlib import Path

from mmreg.records import PairRecord, ResultRow
from mmreg.tasks.define import task


@task(outputs=["outcome"])
def SubjectDerivatives(
    subject: str,
    pairs: list[dict],
    rows: list[dict],
    missing_rows: list[dict],
    output_dir: str,
    run_id: str,
) -> dict:
    """The derivatives sink of one subject
    (:func:`mmreg.bids_app.derivatives.write_subject_outputs`).

    Args:
        subject: Subject label.
        pairs: The subject's :class:`~mmreg.records.PairRecord` JSONs.
        rows: Its :class:`~mmreg.records.ResultRow` JSONs (any order; matched by pair_id).
        missing_rows: CSV rows of the pairs that could not be run.
        output_dir: The derivatives dataset.
        run_id: The run writing; part of the cache key, so every run writes again.

    Returns:
        outcome: A :class:`~mmreg.records.SubjectOutcome` as JSON.
    """
    from mmreg.bids_app.derivatives import write_subject_outputs

    del run_id
    outcome = write_subject_outputs(
        Path(output_dir),
        subject,
        [PairRecord.from_dict(p) for p in pairs],
        [ResultRow.from_dict(r) for r in rows],
        missing_rows,
    )
    return outcome.to_dict()
