"""Participant-level workflow: subjects -> pairs -> methods, combined per subject.

The DAG, per subject (one ``SubjectWorkflow`` node per subject, so on SLURM a
subject's work stays together)::

    PairWorkflow (split over the subject's pairs)
      PreparePair ──> RegisterPair (split over methods) ──> EvaluatePair
                                                             └─ combine(methods)
    combine(pairs) ──> one list of rows for the subject

Every task turns its failures into ``status: failed`` rows instead of raising,
so a broken subject never stops the others.
"""

from __future__ import annotations

from typing import Any

from pydra.compose import python, workflow

from mmreg.tasks.evaluate import EvaluatePair
from mmreg.tasks.preprocess import PreparePair
from mmreg.tasks.register import RegisterPair


@python.define(outputs=["rows"])
def FlattenRows(rows: list[list[dict]]) -> list[dict]:
    """Concatenate the per-pair row lists of one subject, in pair order."""
    return [row for pair_rows in rows for row in pair_rows]


#: Options every pair shares, with their defaults (see :func:`init_participant_wf`).
DEFAULT_OPTIONS: dict[str, Any] = {
    "spacing": 2.0,
    "normalize": True,
    "mask": False,
    "prealign": "com",
    "seed": 0,
    "device": "auto",
    "threads": 1,
    "label_table": "",
    "code": "",
    "models": {},
}


@workflow.define(outputs=["rows"])
def PairWorkflow(pair: dict, methods: list[str], options: dict) -> list[dict]:
    """Preprocess one pair once, then register and evaluate it with each method."""
    # Workflow inputs are concrete values while the graph is built, so they unpack here.
    o = {**DEFAULT_OPTIONS, **options}
    prepare = workflow.add(
        PreparePair(
            pair=pair,
            spacing=o["spacing"],
            normalize=o["normalize"],
            mask=o["mask"],
            prealign=o["prealign"],
            code=o["code"],
        ),
        name="prepare",
    )
    register = workflow.add(
        RegisterPair(
            prepared=prepare.prepared,
            seed=o["seed"],
            device=o["device"],
            threads=o["threads"],
            models=o["models"],
            code=o["code"],
        ).split(method=methods),
        name="register",
    )
    evaluate = workflow.add(
        EvaluatePair(
            pair=pair, result=register.result, label_table=o["label_table"], code=o["code"]
        ).combine("register.method"),
        name="evaluate",
    )
    return evaluate.row


@workflow.define(outputs=["rows"])
def SubjectWorkflow(pairs: list[dict], methods: list[str], options: dict) -> list[dict]:
    """All pairs x methods of one subject (or session), combined into rows."""
    per_pair = workflow.add(
        PairWorkflow(methods=methods, options=options).split(pair=pairs).combine("pair"),
        name="pair",
    )
    flatten = workflow.add(FlattenRows(rows=per_pair.rows), name="flatten")
    return flatten.rows


@workflow.define(outputs=["rows"])
def ParticipantWorkflow(
    subjects: list[list[dict]], methods: list[str], options: dict
) -> list[list[dict]]:
    """Split over subjects; each element of ``subjects`` is one subject's pairs."""
    subject = workflow.add(
        SubjectWorkflow(methods=methods, options=options).split(pairs=subjects),
        name="subject",
    )
    return subject.rows


def init_participant_wf(
    *,
    subjects: list[list[dict]],
    methods: list[str],
    spacing: float = 2.0,
    normalize: bool = True,
    mask: bool = False,
    prealign: str = "com",
    seed: int = 0,
    device: str = "auto",
    threads: int = 1,
    label_table: str | None = None,
    models: dict[str, dict[str, str]] | None = None,
    code: str = "",
) -> ParticipantWorkflow:
    """Build the participant-level workflow.

    Args:
        subjects: One list of pair records (``Pair.to_dict()``) per subject.
        methods: Method names or ``A+B`` chains.
        spacing: Isotropic registration grid, mm.
        normalize: Robust intensity normalisation.
        mask: Mask the background before registration.
        prealign: ``none``, ``com`` or ``moments``.
        seed: Random seed given to every method.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: Threads per task (ITK/torch), so ``nprocs * threads <= cores``.
        label_table: ``dseg.tsv`` naming the ground-truth labels.
        models: Weights per learned method family, ``{"keymorph": {"path": ...,
            "sha256": ...}}``; the sha256 is part of the cache key.
        code: Code fingerprint (version + source digest) for cache invalidation.

    Returns:
        A ``ParticipantWorkflow`` task; run it with ``wf(worker=..., cache_root=...)``.
        Its ``rows`` output is one list of evaluation rows per subject.

    Example:
        >>> wf = init_participant_wf(subjects=[[{"fixed": "a.nii.gz", "moving": "b.nii.gz"}]],
        ...                          methods=["identity"])
        >>> type(wf).__name__
        'ParticipantWorkflow'
    """
    options = {
        "spacing": float(spacing),
        "normalize": bool(normalize),
        "mask": bool(mask),
        "prealign": prealign,
        "seed": int(seed),
        "device": device,
        "threads": int(threads),
        "label_table": label_table or "",
        "models": {k: dict(v) for k, v in (models or {}).items()},
        "code": code,
    }
    return ParticipantWorkflow(subjects=subjects, methods=list(methods), options=options)
