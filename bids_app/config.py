"""The run configuration: one frozen, JSON-serialisable object per ``mmreg`` run.

The CLI builds a :class:`Config` once; everything downstream (query, workflow,
derivatives, logs) reads from it and nothing changes it. Paths are stored as
absolute strings so that the object round-trips through JSON unchanged and a
saved ``config.json`` says exactly what a run did.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mmreg
from mmreg.atomic import atomic_write_text
from mmreg.imaging.preprocess import DEFAULT_PREALIGN, DEFAULT_SPACING, PREALIGN_MODES
from mmreg.records import GRANULARITIES as RUN_GRANULARITIES
from mmreg.runtime import DEVICES

ANALYSIS_LEVELS = ("participant", "group")
WORKERS = ("debug", "cf", "slurm")
GRANULARITIES = ("auto", *RUN_GRANULARITIES)
#: ``--worker-args`` keys that become sbatch options for the slurm worker. Two more keys:
#: ``poll`` (seconds between job-state checks) and ``sbatch`` (raw options, appended as given).
SLURM_OPTIONS: dict[str, str] = {
    "partition": "--partition",
    "account": "--account",
    "qos": "--qos",
    "time": "--time",
    "mem": "--mem",
    "cpus": "--cpus-per-task",
    "gres": "--gres",
    "constraint": "--constraint",
}
WORKER_ARG_KEYS = (*SLURM_OPTIONS, "poll", "sbatch")

#: Filters applied when ``--fixed``/``--moving`` are not given (the contract's defaults).
DEFAULT_FIXED: dict[str, str] = {"suffix": "T1w"}
DEFAULT_MOVING: dict[str, str] = {"suffix": "T2w"}


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus a short random tail.

    The tail keeps two runs started in the same second (SLURM arrays) apart.
    """
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def slurm_worker_kwargs(worker_args: dict[str, str]) -> dict[str, Any]:
    """Pydra slurm worker arguments from ``--worker-args``.

    ``{"partition": "gpu", "time": "02:00:00", "poll": "5", "sbatch": "--nice=10"}`` ->
    ``{"sbatch_args": "--partition=gpu --time=02:00:00 --nice=10", "poll_delay": 5}``.
    """
    options = [f"{SLURM_OPTIONS[k]}={v}" for k, v in worker_args.items() if k in SLURM_OPTIONS]
    if worker_args.get("sbatch"):
        options.append(worker_args["sbatch"])
    kwargs: dict[str, Any] = {"sbatch_args": " ".join(options)}
    if "poll" in worker_args:
        kwargs["poll_delay"] = int(worker_args["poll"])
    return kwargs


def describe_filter(entities: dict[str, str]) -> str:
    """``suffix=T2w acq=highres``: a filter as the user would type it."""
    return " ".join(f"{k}={v}" for k, v in entities.items())


@dataclass(frozen=True)
class Config:
    """Everything one run needs.

    Attributes:
        bids_dir: Input BIDS dataset (absolute).
        output_dir: Derivatives dataset written by mmreg (absolute).
        analysis_level: ``participant`` or ``group``.
        participant_labels: Subject labels without ``sub-``; empty means all.
        session_labels: Session labels without ``ses-``; empty means all sessions.
        fixed: Entity filter selecting the fixed image (``{"suffix": "T1w"}``).
            Keys are BIDS keys as typed on the command line (``suffix``,
            ``acq``, ``ses``, ``run``, ``ce``, ...).
        moving: One entity filter per moving modality; each gives its own pairs.
        ground_truth: Ground-truth derivatives folder, or ``None``.
        methods: Method specs as given on the CLI (``ants-affine``, ``a+b`` chains).
        models: ``--model`` weights per learned method family (``{"keymorph": path}``);
            families not listed use the shipped weights.
        work_dir: Pydra cache root and BIDS index (absolute).
        worker: Pydra worker: ``debug``, ``cf`` or ``slurm``.
        nprocs: Parallel tasks for the ``cf`` worker.
        job_granularity: What one worker job is: ``task`` (every Pydra task), ``subject``
            (a subject's whole pipeline in one job), or ``auto`` (see
            :meth:`granularity_for`).
        worker_args: ``--worker-args`` as ``{key: value}`` (keys in :data:`WORKER_ARG_KEYS`);
            for the ``slurm`` worker, see :func:`slurm_worker_kwargs`.
        omp_nthreads: Threads inside each task (ITK, torch). 1 keeps results
            bit-reproducible; more is faster but ITK's multi-threaded metrics
            then vary in the last digits between runs.
        random_seed: Seed given to every method.
        device: ``auto``, ``cpu`` or ``cuda``.
        resolution: Isotropic working resolution in mm.
        prealign: Pre-alignment: ``none``, ``com`` (centre of mass) or ``moments``.
        mask: Restrict similarity/normalisation to a foreground mask.
        coronal_slice: Register 2D images (DXA) to a 3D image's mid-coronal slice.
        max_pairs: Register at most this many pairs (``None``: all); for quick looks.
        matching: Group level: match 2D and 3D scans across subjects (whole-body DXA
            and MR) with the contrastive encoder and flag suspected subject swaps.
        stop_on_first_crash: Participant level: run subjects one after the other and stop
            after the first subject with a failed (pair, method) row.
        validate_bids: Participant level: run ``bids-validator-deno`` on the input first
            (its findings are reported, not fatal).
        verbose: Terminal verbosity (0: info, 1: more, 2: debug incl. third-party).
        version: mmreg version that made this config.
        run_id: UTC timestamp id of this run (names the log folder).
    """

    bids_dir: str
    output_dir: str
    analysis_level: str = "participant"
    participant_labels: tuple[str, ...] = ()
    session_labels: tuple[str, ...] = ()
    fixed: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FIXED))
    moving: tuple[dict[str, str], ...] = field(default_factory=lambda: (dict(DEFAULT_MOVING),))
    ground_truth: str | None = None
    methods: tuple[str, ...] = ()
    models: dict[str, str] = field(default_factory=dict)
    work_dir: str = ""
    worker: str = "cf"
    nprocs: int = 1
    job_granularity: str = "auto"
    worker_args: dict[str, str] = field(default_factory=dict)
    omp_nthreads: int = 1
    random_seed: int = 0
    device: str = "auto"
    resolution: float = DEFAULT_SPACING
    prealign: str = DEFAULT_PREALIGN
    mask: bool = False
    coronal_slice: bool = False
    max_pairs: int | None = None
    matching: bool = True
    stop_on_first_crash: bool = False
    validate_bids: bool = True
    verbose: int = 0
    version: str = mmreg.__version__
    run_id: str = field(default_factory=new_run_id)

    def __post_init__(self) -> None:
        # Normalise types so that a Config built in Python equals its JSON round trip.
        set_ = object.__setattr__  # frozen: the only place fields are set after creation
        set_(self, "bids_dir", str(self.bids_dir))
        set_(self, "output_dir", str(self.output_dir))
        set_(self, "work_dir", str(self.work_dir or Path(self.output_dir) / "work"))
        if self.ground_truth is not None:
            set_(self, "ground_truth", str(self.ground_truth))
        set_(self, "participant_labels", tuple(str(x) for x in self.participant_labels))
        set_(self, "session_labels", tuple(str(x) for x in self.session_labels))
        set_(self, "fixed", {str(k): str(v) for k, v in dict(self.fixed).items()})
        set_(
            self,
            "moving",
            tuple({str(k): str(v) for k, v in dict(m).items()} for m in self.moving),
        )
        set_(self, "methods", tuple(str(m) for m in self.methods))
        set_(self, "models", {str(k): str(v) for k, v in dict(self.models).items()})
        set_(self, "worker_args", {str(k): str(v) for k, v in dict(self.worker_args).items()})
        set_(self, "resolution", float(self.resolution))
        self._check()

    def _check(self) -> None:
        # These are programming errors (the CLI validates user input first), hence ValueError.
        if self.analysis_level not in ANALYSIS_LEVELS:
            raise ValueError(f"analysis_level must be one of {ANALYSIS_LEVELS}")
        if self.worker not in WORKERS:
            raise ValueError(f"worker must be one of {WORKERS}")
        if self.job_granularity not in GRANULARITIES:
            raise ValueError(f"job_granularity must be one of {GRANULARITIES}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}")
        if self.prealign not in PREALIGN_MODES:
            raise ValueError(f"prealign must be one of {PREALIGN_MODES}")
        if not self.moving:
            raise ValueError("at least one moving filter is needed")
        if set(self.worker_args) - set(WORKER_ARG_KEYS):
            raise ValueError(f"worker_args keys must be among {WORKER_ARG_KEYS}")

    def granularity_for(self, n_subjects: int) -> str:
        """The job granularity in effect for a run of ``n_subjects``.

        ``auto`` is ``subject`` on SLURM (each job pays a queue wait and a fresh Python),
        and with the cf worker for a cohort: subjects then run side by side, each one's
        results land as soon as it ends, and the first subjects are done before the last
        start. A cohort is two or more subjects for one process, four or more per process
        otherwise: the last subjects' jobs cannot share out their tasks, which costs little
        only when each process has several subjects to run. With fewer, ``task`` keeps
        every process busy.

        Example:
            >>> config = Config(bids_dir="/b", output_dir="/o", analysis_level="participant",
            ...                 worker="cf", nprocs=2)
            >>> [config.granularity_for(n) for n in (3, 8)]
            ['task', 'subject']
            >>> config.replace(nprocs=1).granularity_for(2)
            'subject'
        """
        if self.job_granularity != "auto":
            return self.job_granularity
        if self.worker == "slurm":
            return "subject"
        per_process = 2 if self.nprocs <= 1 else 4
        cohort = n_subjects >= per_process * max(1, self.nprocs)
        return "subject" if self.worker == "cf" and cohort else "task"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["participant_labels"] = list(self.participant_labels)
        data["session_labels"] = list(self.session_labels)
        data["moving"] = [dict(m) for m in self.moving]
        data["methods"] = list(self.methods)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Inverse of :meth:`to_dict`; unknown keys are an error (typos must not pass)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        for key in ("participant_labels", "session_labels", "methods", "moving"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_json(self) -> str:
        """Indented JSON text of the configuration."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Config:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically and return the path."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Config:
        """Read a configuration written by :meth:`save`."""
        return cls.from_json(Path(path).read_text())

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (the original stays frozen)."""
        return dataclasses.replace(self, **changes)
