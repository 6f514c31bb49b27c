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
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pydra.compose import workflow

from mmreg.imaging.preprocess import DEFAULT_PREALIGN, DEFAULT_SPACING
from mmreg.records import PairRecord, RunOptions, SubjectRecord
from mmreg.runtime import usable_cpus
from mmreg.tasks.define import task
from mmreg.tasks.evaluate import EvaluatePair
from mmreg.tasks.preprocess import PreparePair
from mmreg.tasks.register import RegisterPair
from mmreg.tasks.sink import SubjectDerivatives


@task(outputs=["rows"])
def FlattenRows(rows: list[list[dict]]) -> list[dict]:
    """Concatenate the per-pair row lists of one subject, in pair order."""
    return [row for pair_rows in rows for row in pair_rows]


@workflow.define(outputs=["rows"])
def PairWorkflow(pair: dict, methods: list[str], options: dict) -> list[dict]:
    """Preprocess one pair once, then register and evaluate it with each method.

    Inputs: ``pair``, a :class:`~mmreg.records.PairRecord` as JSON; ``methods``;
    ``options``, a :class:`~mmreg.records.RunOptions` as JSON.
    Outputs: ``rows``, one :class:`~mmreg.records.ResultRow` JSON per method.
    """
    # Workflow inputs are concrete values while the graph is built, so they unpack here.
    o = RunOptions.from_dict(options)
    prepare = workflow.add(
        PreparePair(
            pair=pair,
            spacing=o.spacing,
            normalize=o.normalize,
            mask=o.mask,
            prealign=o.prealign,
            coronal_slice=o.coronal_slice,
            code=o.code,
        ),
        name="prepare",
    )
    register = workflow.add(
        RegisterPair(
            prepared=prepare.prepared,
            seed=o.seed,
            device=o.device,
            threads=o.threads,
            models={k: dict(v) for k, v in o.models.items()},
            code=o.code,
        ).split(method=methods),
        name="register",
    )
    evaluate = workflow.add(
        EvaluatePair(
            pair=pair,
            result=register.result,
            label_table=o.label_table,
            coronal_slice=o.coronal_slice,
            code=o.code,
        ).combine("register.method"),
        name="evaluate",
    )
    return evaluate.row


@workflow.define(outputs=["rows"])
def SubjectWorkflow(subject: dict, methods: list[str], options: dict) -> Any:
    """All pairs x methods of one subject, combined; then the subject's derivatives sink.

    Inputs: ``subject``, a :class:`~mmreg.records.SubjectRecord` as JSON; ``methods``;
    ``options``, a :class:`~mmreg.records.RunOptions` as JSON.
    Outputs: ``rows``: with ``options.output_dir`` set, one
    :class:`~mmreg.records.SubjectOutcome` JSON (what the sink wrote); without it (the
    Python API, tests), the subject's :class:`~mmreg.records.ResultRow` JSONs.
    """
    o = RunOptions.from_dict(options)
    record = SubjectRecord.from_dict(subject)
    per_pair = workflow.add(
        PairWorkflow(methods=methods, options=options)
        .split(pair=[p.to_dict() for p in record.pairs])
        .combine("pair"),
        name="pair",
    )
    flatten = workflow.add(FlattenRows(rows=per_pair.rows), name="flatten")
    if not o.output_dir:
        return flatten.rows
    sink = workflow.add(
        SubjectDerivatives(
            subject=record.subject,
            pairs=[p.to_dict() for p in record.pairs],
            rows=flatten.rows,
            missing_rows=[dict(r) for r in record.missing_rows],
            output_dir=o.output_dir,
            run_id=o.run_id,
        ),
        name="derivatives",
    )
    return sink.outcome


@task(outputs=["rows"])
def SubjectJob(subject: dict, methods: list[str], options: dict, cache_root: str) -> Any:
    """One subject's whole ``SubjectWorkflow``, run inside this task (one job).

    The inner run uses the CPUs this job was given (``--worker-args cpus=N`` on SLURM;
    ``inner_procs`` from the options of a local run): the cf worker with that many
    processes, or the serial debug worker for one CPU.
    """
    o = RunOptions.from_dict(options)
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or usable_cpus()
    n_procs = o.inner_procs or max(1, cpus // max(1, o.threads))
    # Without the outer-only fields, the inner nodes hash exactly as in a task-granular run.
    inner = SubjectWorkflow(subject=subject, methods=methods, options=o.inner().to_dict())
    if n_procs > 1:
        outputs = inner(worker="cf", n_procs=n_procs, cache_root=cache_root)
    else:
        outputs = inner(worker="debug", cache_root=cache_root)
    return outputs.rows


@workflow.define(outputs=["rows"])
def ParticipantWorkflow(subjects: list[dict], methods: list[str], options: dict) -> list[Any]:
    """Split over subjects (see :func:`SubjectWorkflow` for one element of ``subjects``)."""
    o = RunOptions.from_dict(options)
    if o.granularity == "subject":
        job = SubjectJob(methods=methods, options=options, cache_root=o.cache_root)
        node = workflow.add(job.split(subject=subjects), name="subject_job")
    else:
        node = workflow.add(
            SubjectWorkflow(methods=methods, options=options).split(subject=subjects),
            name="subject",
        )
    return node.rows


def subject_record(
    pairs: Sequence[PairRecord | Mapping[str, Any]],
    missing_rows: Sequence[Mapping[str, Any]] = (),
) -> SubjectRecord:
    """One element of the participant workflow's ``subjects``.

    Pairs without a ``pair_id`` (the Python API may leave it out) get ``pair-<k>``: rows
    are matched to their pairs by it.
    """
    records = [p if isinstance(p, PairRecord) else PairRecord.from_dict(p) for p in pairs]
    labels = {r.subject for r in records} | {str(m["subject"]) for m in missing_rows}
    if len(labels) != 1:
        raise ValueError(f"one subject per element, got {sorted(labels)}")
    records = [r if r.pair_id else replace(r, pair_id=f"pair-{k}") for k, r in enumerate(records)]
    return SubjectRecord(labels.pop(), tuple(records), tuple(dict(m) for m in missing_rows))


def init_participant_wf(
    *,
    subjects: Sequence[Sequence[PairRecord | Mapping[str, Any]]],
    methods: Sequence[str],
    spacing: float = DEFAULT_SPACING,
    normalize: bool = True,
    mask: bool = False,
    prealign: str = DEFAULT_PREALIGN,
    coronal_slice: bool = False,
    seed: int = 0,
    device: str = "auto",
    threads: int = 1,
    label_table: str | None = None,
    models: Mapping[str, Mapping[str, str]] | None = None,
    code: str = "",
    granularity: str = "task",
    cache_root: str | os.PathLike[str] | None = None,
    inner_procs: int = 0,
    output_dir: str | os.PathLike[str] | None = None,
    run_id: str = "",
    missing_rows: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Any:  # a ParticipantWorkflow task (a Pydra class, not a type to mypy)
    """Build the participant-level workflow.

    Args:
        subjects: One list of pair records (:class:`~mmreg.records.PairRecord` or its
            JSON) per subject.
        methods: Method names or ``A+B`` chains.
        spacing, normalize, mask, prealign, coronal_slice, seed, device, threads, code:
            See :class:`~mmreg.records.RunOptions`.
        label_table: ``dseg.tsv`` naming the ground-truth labels.
        models: Weights per learned method family, ``{"keymorph": {"path": ...,
            "sha256": ...}}``; the sha256 is part of the cache key.
        granularity: ``task`` (every task is a node of this workflow) or ``subject`` (one
            :func:`SubjectJob` task per subject, e.g. one sbatch job); ``subject`` needs
            ``cache_root``, the work dir the run uses.
        cache_root: The run's cache root (only read with ``granularity="subject"``).
        inner_procs: Processes inside each subject job (0: the CPUs the job has; 1 when
            the jobs themselves run side by side on one machine).
        output_dir: The derivatives dataset; each subject's sink writes into it as soon as
            the subject is done. ``None``: no sink, the workflow returns the rows.
        run_id: The run (each run writes its derivatives again).
        missing_rows: CSV rows of pairs that cannot run, per subject label, written into
            the subject's table by its sink.

    Returns:
        A ``ParticipantWorkflow`` task; run it with ``wf(worker=..., cache_root=...)``.
        Its ``rows`` output has one element per subject: a
        :class:`~mmreg.records.SubjectOutcome` JSON with ``output_dir``, else the
        subject's :class:`~mmreg.records.ResultRow` JSONs.

    Example:
        >>> wf = init_participant_wf(subjects=[[{"subject": "01", "session": None,
        ...     "fixed": "a.nii.gz", "moving": "b.nii.gz", "fixed_label": "T1w",
        ...     "moving_label": "T2w"}]], methods=["identity"])
        >>> type(wf).__name__
        'ParticipantWorkflow'
    """
    options = RunOptions(
        spacing=float(spacing),
        normalize=bool(normalize),
        mask=bool(mask),
        prealign=prealign,
        coronal_slice=bool(coronal_slice),
        seed=int(seed),
        device=device,
        threads=int(threads),
        label_table=label_table or "",
        models={k: dict(v) for k, v in (models or {}).items()},
        code=code,
        granularity=granularity,
        cache_root=str(cache_root) if cache_root and granularity == "subject" else "",
        inner_procs=int(inner_procs) if granularity == "subject" else 0,
        output_dir=str(output_dir or ""),
        run_id=run_id,
    )
    missing = missing_rows or {}
    records = []
    for pairs in subjects:
        first = pairs[0]
        label = first.subject if isinstance(first, PairRecord) else str(first["subject"])
        records.append(subject_record(pairs, missing.get(label, ())).to_dict())
    return ParticipantWorkflow(subjects=records, methods=list(methods), options=options.to_dict())
