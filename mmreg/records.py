"""Typed records passed between mmreg's layers.

The BIDS-App builds them, the workflow hands them to its tasks as JSON (``to_dict``:
Pydra hashes and pickles plain values), and each task reads them back (``from_dict``):

- :class:`PairRecord`: one registration to run (what the BIDS query found, plus the
  run's input digest);
- :class:`RunOptions`: what every pair of a run shares (grid, seed, device, ...), each
  default defined here once;
- :class:`ResultRow`: one (pair, method) result as the evaluation task returns it,
  carrying its ``pair_id`` and the files the derivatives sink copies;
- :class:`SubjectRecord`: one subject's pairs (one element of the participant split);
- :class:`SubjectOutcome`: what a subject's derivatives sink wrote and returns;
- :class:`LabelledImage`: one image with its ground truth (``mmreg train``).

Example:
    >>> pair = PairRecord("01", None, "/d/T1w.nii.gz", "/d/T2w.nii.gz", "T1w", "T2w",
    ...                   pair_id="sub-01_from-T2w_to-T1w")
    >>> PairRecord.from_dict({**pair.to_dict(), "unknown": 1}) == pair
    True
    >>> row = ResultRow(pair.pair_id, "identity", "ok", metrics={"dice_mean": 0.8})
    >>> ResultRow.from_dict(row.to_dict()) == row
    True
    >>> RunOptions.from_dict({"seed": 3}).spacing
    2.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from mmreg.imaging.preprocess import DEFAULT_PREALIGN, DEFAULT_SPACING

__all__ = [
    "GRANULARITIES",
    "LabelledImage",
    "PairRecord",
    "ResultRow",
    "RunOptions",
    "SubjectOutcome",
    "SubjectRecord",
]

_R = TypeVar("_R")

#: How the participant workflow maps onto jobs (see :mod:`mmreg.workflows.participant`).
GRANULARITIES = ("task", "subject")


def _from_dict(cls: type[_R], data: Mapping[str, Any]) -> _R:
    """``cls(**data)`` with the keys ``cls`` does not know left out."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class PairRecord:
    """One registration to run: a moving image onto a fixed image of one subject.

    Attributes:
        subject: Subject label without ``sub-``.
        session: Session label without ``ses-``, or ``None``.
        fixed: Absolute path of the fixed image.
        moving: Absolute path of the moving image.
        fixed_label: Modality label of the fixed image in output names (``T1w``).
        moving_label: Modality label of the moving image (``T2w``).
        fixed_dseg, moving_dseg: Ground-truth label maps on each image's grid, or ``None``.
        fixed_landmarks, moving_landmarks: Ground-truth landmark TSVs, or ``None``.
        pair_id: ``sub-<l>[_ses-<s>]_from-<moving>_to-<fixed>``; unique in a run.
        bids_dir: The input dataset (for the BIDS URIs of the outputs), or empty.
        inputs_sha256: Digest of every file the pair's tasks read (part of the cache key).
    """

    subject: str
    session: str | None
    fixed: str
    moving: str
    fixed_label: str
    moving_label: str
    fixed_dseg: str | None = None
    moving_dseg: str | None = None
    fixed_landmarks: str | None = None
    moving_landmarks: str | None = None
    pair_id: str = ""
    bids_dir: str = ""
    inputs_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON the tasks exchange (every field, in field order)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairRecord:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        return _from_dict(cls, data)

    def image(self, side: str) -> str:
        """The ``fixed`` or ``moving`` image."""
        return self.fixed if side == "fixed" else self.moving

    def label(self, side: str) -> str:
        """The ``fixed`` or ``moving`` modality label."""
        return self.fixed_label if side == "fixed" else self.moving_label


@dataclass(frozen=True)
class RunOptions:
    """What every pair of a participant run shares (see ``init_participant_wf``).

    Attributes:
        spacing: Isotropic registration grid, mm.
        normalize: Robust intensity normalisation.
        mask: Mask the background before registration.
        prealign: Pre-alignment mode (:data:`mmreg.imaging.preprocess.PREALIGN_MODES`).
        coronal_slice: Register 2D images to a 3D image's mid-coronal slice.
        seed: The master seed, given to every method.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: Threads per task (ITK/torch).
        label_table: ``dseg.tsv`` naming the ground-truth labels, or empty.
        code: Code fingerprint (cache invalidation).
        models: Weights per learned family, ``{"keymorph": {"path": .., "sha256": ..}}``.
        granularity: One of :data:`GRANULARITIES`.
        cache_root: The run's work dir (read with ``granularity="subject"`` only).
        inner_procs: Processes of a subject job's inner run (0: the CPUs the job has).
        output_dir: Where the derivatives sink writes; empty: no sink (rows only).
        run_id: The run writing; a new run writes its derivatives again.
    """

    spacing: float = DEFAULT_SPACING
    normalize: bool = True
    mask: bool = False
    prealign: str = DEFAULT_PREALIGN
    coronal_slice: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 1
    label_table: str = ""
    code: str = ""
    models: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    granularity: str = "task"
    cache_root: str = ""
    inner_procs: int = 0
    output_dir: str = ""
    run_id: str = ""

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}")
        if self.granularity == "subject" and not self.cache_root:
            raise ValueError("granularity='subject' needs the run's cache_root")

    #: Fields only the outer workflow reads; a subject job's inner nodes never see them,
    #: so they hash as in a ``granularity="task"`` run.
    OUTER_ONLY = ("granularity", "cache_root", "inner_procs")

    def to_dict(self) -> dict[str, Any]:
        """The JSON the workflows exchange."""
        out = asdict(self)
        out["models"] = {k: dict(v) for k, v in self.models.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunOptions:
        """Inverse of :meth:`to_dict`; missing keys take their defaults."""
        return _from_dict(cls, data)

    def inner(self) -> RunOptions:
        """These options as the inner workflow of a subject job sees them."""
        # Left out, the outer-only fields take their defaults.
        return RunOptions.from_dict(
            {k: v for k, v in self.to_dict().items() if k not in self.OUTER_ONLY}
        )


@dataclass(frozen=True)
class ResultRow:
    """One (pair, method) result, as the evaluation task returns it.

    Attributes:
        pair_id: The :attr:`PairRecord.pair_id` this row belongs to.
        method: Method name (or ``A+B`` chain).
        status: ``ok`` or ``failed``.
        error: One-line reason of a failure.
        runtime_s: Registration time.
        warnings: Warnings raised on the way, ``; ``-joined.
        metrics: The evaluation and method columns of the CSV (``dice_mean``, ...).
        warped: The warped image the task wrote (in its work folder), or empty.
        transform: The transform file the task wrote, or empty.
        label_maps: Predicted label maps per side (``fixed``/``moving``).
        midcoronal: The mid-coronal slice record of a 2D/3D pair, or empty.
        extras: The method's extra outputs (keypoints, chain steps, ...).
        traceback: The traceback of a failure, for the log.
    """

    pair_id: str
    method: str
    status: str
    error: str = ""
    runtime_s: float | None = None
    warnings: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    warped: str = ""
    transform: str = ""
    label_maps: Mapping[str, str] = field(default_factory=dict)
    midcoronal: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The JSON the tasks exchange."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultRow:
        """Inverse of :meth:`to_dict`."""
        return _from_dict(cls, data)

    def failed(self, reason: str) -> ResultRow:
        """This row, failed for ``reason`` (its files are not derivatives)."""
        return replace(self, status="failed", error=reason, warped="", transform="")


@dataclass(frozen=True)
class SubjectRecord:
    """One subject of a participant run: the pairs to run and those that cannot run.

    Attributes:
        subject: Subject label.
        pairs: Its pairs (each ``pair_id`` unique within the subject).
        missing_rows: CSV rows of the pairs that cannot run (written by its sink).
    """

    subject: str
    pairs: tuple[PairRecord, ...] = ()
    missing_rows: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "pairs": [p.to_dict() for p in self.pairs],
            "missing_rows": [dict(r) for r in self.missing_rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubjectRecord:
        return cls(
            subject=str(data["subject"]),
            pairs=tuple(PairRecord.from_dict(p) for p in data.get("pairs", ())),
            missing_rows=tuple(data.get("missing_rows", ())),
        )


@dataclass(frozen=True)
class SubjectOutcome:
    """What a subject's derivatives sink wrote.

    Attributes:
        subject: Subject label.
        rows: The rows of ``sub-<label>_evaluation.csv`` (contract columns first).
        tracebacks: ``(pair_id, method, traceback)`` of each failed row, for the log.
        damaged: Work folders whose files no longer matched their seal (recompute them).
    """

    subject: str
    rows: tuple[Mapping[str, Any], ...] = ()
    tracebacks: tuple[tuple[str, str, str], ...] = ()
    damaged: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "rows": [dict(r) for r in self.rows],
            "tracebacks": [list(t) for t in self.tracebacks],
            "damaged": list(self.damaged),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubjectOutcome:
        return cls(
            subject=str(data["subject"]),
            rows=tuple(data.get("rows", ())),
            tracebacks=tuple((str(p), str(m), str(t)) for p, m, t in data.get("tracebacks", ())),
            damaged=tuple(data.get("damaged", ())),
        )


def _plain(value: Any) -> Any:
    """Mappings as plain dicts (JSON)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class LabelledImage:
    """One anatomical image with its ground-truth files (``mmreg train``'s image mode).

    Attributes:
        path: The image.
        subject: Participant label (no ``sub-``).
        session: Session label or ``None``.
        suffix: BIDS suffix (``T1w``).
        dseg: Label map on the image's grid (``..._space-<suffix>_dseg.nii.gz``) or ``None``.
        landmarks: Landmark table (``..._space-<suffix>_desc-landmarks.tsv``) or ``None``.

    Example:
        >>> LabelledImage("sub-01_T1w.nii.gz", "01", None, "T1w").dseg is None
        True
    """

    path: str
    subject: str
    session: str | None
    suffix: str
    dseg: str | None = None
    landmarks: str | None = None
