"""Participant-level workflow: subjects -> pairs -> methods, combined per subject.

The DAG, per subject (one ``SubjectWorkflow`` node per subject, so on SLURM a
subject's work stays together)::

    PairWorkflow (split over the subject's pairs)
      PreparePair ──> RegisterPair (split over methods) ──> EvaluatePair
                                                             └─ combine(methods)
    combine(pairs) ──> one list of rows for the subject

Every task turns its failures into ``status: failed`` rows instead of raising,
so a broken subject never stops the others.

Job granularity: Pydra's slurm worker submits every *task* as its own sbatch job, which
would make 1 + 2M tiny jobs per pair (each a fresh Python paying imports and queue
latency). With ``granularity="subject"`` (the default for SLURM) each subject instead
becomes one :func:`SubjectJob` task, i.e. one sbatch job, that runs the same
``SubjectWorkflow`` inside the job with a local worker and the same cache root. The inner
tasks are the same nodes with the same hashes, so a cf run and a slurm run share (and
resume from) one work dir, and give identical outputs.
"""

from __future__ import annotations

import os
from typing import Any

from pydra.compose import workflow

from mmreg.imaging.preprocess import DEFAULT_PREALIGN
from mmreg.runtime import usable_cpus
from mmreg.tasks.define import task
from mmreg.tasks.evaluate import EvaluatePair
from mmreg.tasks.preprocess import PreparePair
from mmreg.tasks.register import RegisterPair


@task(outputs=["rows"])
def FlattenRows(rows: list[list[dict]]) -> list[dict]:
    """Concatenate the per-pair row lists of one subject, in pair order."""
    return [row for pair_rows in rows for row in pair_rows]


#: Options every pair shares, with their defaults (see :func:`init_participant_wf`).
DEFAULT_OPTIONS: dict[str, Any] = {
    "spacing": 2.0,
    "normalize": True,
    "mask": False,
    "prealign": DEFAULT_PREALIGN,
    "coronal_slice": False,
    "seed": 0,
    "device": "auto",
    "threads": 1,
    "label_table": "",
    "code": "",
    "models": {},
    "granularity": "task",
    "cache_root": "",
}
GRANULARITIES = ("task", "subject")


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
            coronal_slice=o["coronal_slice"],
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
            pair=pair,
            result=register.result,
            label_table=o["label_table"],
            coronal_slice=o["coronal_slice"],
            code=o["code"],
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


@task(outputs=["rows"])
def SubjectJob(
    pairs: list[dict], methods: list[str], options: dict, cache_root: str
) -> list[dict]:
    """One subject's whole ``SubjectWorkflow``, run inside this task (one sbatch job).

    The inner run uses the CPUs this job was given (``--worker-args cpus=N``): the cf
    worker with that many processes, or the serial debug worker for one CPU.
    """
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or usable_cpus()
    threads = max(1, int(options.get("threads", 1)))
    n_procs = max(1, cpus // threads)
    # Without the outer-only keys, the inner nodes hash exactly as in a granularity="task" run.
    inner_options = {k: v for k, v in options.items() if k not in ("granularity", "cache_root")}
    inner = SubjectWorkflow(pairs=pairs, methods=methods, options=inner_options)
    if n_procs > 1:
        outputs = inner(worker="cf", n_procs=n_procs, cache_root=cache_root)
    else:
        outputs = inner(worker="debug", cache_root=cache_root)
    return list(outputs.rows)


@workflow.define(outputs=["rows"])
def ParticipantWorkflow(
    subjects: list[list[dict]], methods: list[str], options: dict
) -> list[list[dict]]:
    """Split over subjects; each element of ``subjects`` is one subject's pairs."""
    o = {**DEFAULT_OPTIONS, **options}
    if o["granularity"] == "subject":
        job = SubjectJob(methods=methods, options=options, cache_root=o["cache_root"])
        subject = workflow.add(job.split(pairs=subjects), name="subject_job")
    else:
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
    prealign: str = DEFAULT_PREALIGN,
    coronal_slice: bool = False,
    seed: int = 0,
    device: str = "auto",
    threads: int = 1,
    label_table: str | None = None,
    models: dict[str, dict[str, str]] | None = None,
    code: str = "",
    granularity: str = "task",
    cache_root: str | os.PathLike[str] | None = None,
) -> ParticipantWorkflow:
    """Build the participant-level workflow.

    Args:
        subjects: One list of pair records (``Pair.to_dict()``) per subject.
        methods: Method names or ``A+B`` chains.
        spacing: Isotropic registration grid, mm.
        normalize: Robust intensity normalisation.
        mask: Mask the background before registration.
        prealign: ``auto`` (default), ``none``, ``com`` or ``moments``; see
            :func:`mmreg.imaging.preprocess.prealign`.
        coronal_slice: Register 2D images to a 3D image's mid-coronal slice.
        seed: Random seed given to every method.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: Threads per task (ITK/torch), so ``nprocs * threads <= cores``.
        label_table: ``dseg.tsv`` naming the ground-truth labels.
        models: Weights per learned method family, ``{"keymorph": {"path": ...,
            "sha256": ...}}``; the sha256 is part of the cache key.
        code: Code fingerprint (version + source digest) for cache invalidation.
        granularity: ``task`` (every task is a node of this workflow) or ``subject`` (one
            :func:`SubjectJob` task per subject, e.g. one sbatch job); ``subject`` needs
            ``cache_root``, the work dir the run uses.
        cache_root: The run's cache root (only read with ``granularity="subject"``).

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
        "coronal_slice": bool(coronal_slice),
        "seed": int(seed),
        "device": device,
        "threads": int(threads),
        "label_table": label_table or "",
        "models": {k: dict(v) for k, v in (models or {}).items()},
        "code": code,
    }
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}")
    if granularity == "subject":
        if not cache_root:
            raise ValueError("granularity='subject' needs the run's cache_root")
        # Only the outer node sees these; the inner nodes' hashes stay as in a task run.
        options = {**options, "granularity": granularity, "cache_root": str(cache_root)}
    return ParticipantWorkflow(subjects=subjects, methods=list(methods), options=options)
