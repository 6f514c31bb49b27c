"""Running the levels: participant (Pydra workflow + derivatives), group, demo."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mmreg.atomic import atomic_write_text, remove_stale_temporaries
from mmreg.bids_app import derivatives
from mmreg.bids_app.config import Config, slurm_worker_kwargs
from mmreg.bids_app.exit_codes import EXIT_OK, EXIT_SOFTWARE, EXIT_SOME_FAILED
from mmreg.bids_app.logs import LOGGER, setup_logging
from mmreg.bids_app.models import check_methods
from mmreg.bids_app.query import MissingPair, Pair
from mmreg.cache import forget_workflows, purge_corrupt, remove_stale_locks
from mmreg.errors import UsageError
from mmreg.provenance import files_sha256
from mmreg.records import PairRecord, SubjectOutcome
from mmreg.runtime import limit_threads

os.environ.setdefault("NO_ET", "1")


#: The state locations :func:`use_work_dir_for_state` set (not the user).
_STATE_SET: dict[str, str] = {}


def use_work_dir_for_state(work_dir: str | os.PathLike[str]) -> None:
    """Keep engine and library state under WORK_DIR, never under HOME.

    Pydra's file-hash cache defaults to ``~/.cache/pydra`` and matplotlib's font cache to
    ``~/.cache/matplotlib``: a missing or read-only HOME (a container, a cluster account)
    must not fail a run, nor may a run write outside OUTPUT_DIR/WORK_DIR. A variable the
    user has set is kept. Workers inherit the environment.
    """
    state = Path(work_dir) / ".state"
    wanted = {"PYDRA_HASH_CACHE": state / "pydra-hashes", "MPLCONFIGDIR": state / "matplotlib"}
    for var, path in wanted.items():
        # What an earlier run in this process set is ours to move: a second run (the
        # Python API, a test session) must not write into the first run's work dir.
        if os.environ.get(var) in (None, _STATE_SET.get(var)):
            os.environ[var] = _STATE_SET[var] = str(path)
        Path(os.environ[var]).mkdir(parents=True, exist_ok=True)


def remove_stale_engine_locks(work_dir: str | os.PathLike[str]) -> None:
    """Remove the locks a killed run left in the work dir and the hash cache (they would
    stall this run for ever; see :func:`mmreg.cache.remove_stale_locks`)."""
    folders = [Path(work_dir), Path(os.environ.get("PYDRA_HASH_CACHE", work_dir))]
    for lock in remove_stale_locks(*folders):
        LOGGER.info("work dir: removed the stale lock %s of a killed run", lock.name)


def _log_dir(config: Config) -> Path:
    return Path(config.output_dir) / "logs" / config.run_id


class _Progress:
    """Counts finished registrations in the work dir while Pydra runs.

    On a terminal this is a tqdm bar; where nobody watches one (nohup, SLURM, CI: stderr
    is not a terminal) each finished registration is one log line with an estimate of
    the time left, so a job's log shows how far it got.
    """

    def __init__(self, cache_root: Path, total: int) -> None:
        from tqdm import tqdm

        self._root, self._stop = cache_root, threading.Event()
        self._bar = tqdm(
            total=total, desc="registrations", unit="registration", leave=True, disable=None
        )
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._start = time.monotonic()
        self._done = self._first = min(total, self._count())

    def _count(self) -> int:
        # A registration is done once its task sealed its folder after writing its manifest
        # (both ours; nothing of the engine's is read).
        from mmreg.cache import SEAL
        from mmreg.tasks._manifest import Registered

        return sum(
            1 for p in self._root.glob(f"*/{Registered.NAME}") if (p.parent / SEAL).exists()
        )

    def _update(self) -> None:
        total = self._bar.total
        done = min(total, self._count())
        self._bar.n = done
        self._bar.refresh()
        if self._bar.disable:
            elapsed = time.monotonic() - self._start
            for n in range(self._done + 1, done + 1):
                rate = elapsed / max(1, done - self._first)
                left = f", about {_duration(rate * (total - n))} left" if n < total else ""
                LOGGER.info(
                    "registration %d of %d done (%s elapsed%s)", n, total, _duration(elapsed), left
                )
        self._done = max(self._done, done)

    def _watch(self) -> None:
        if self._first and self._bar.disable:
            LOGGER.info(
                "%d of %d registration(s) already in the work dir", self._first, self._bar.total
            )
        beat = 0
        while not self._stop.wait(2.0):
            self._update()
            beat += 1
            if beat % 15 == 0:  # a job sharing the work dir (an array) may be killed any time
                remove_stale_engine_locks(self._root)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self._update()
        self._bar.close()


def _duration(seconds: float) -> str:
    """``1:02:03`` (h:mm:ss).

    Example:
        >>> _duration(3723.4)
        '1:02:03'
    """
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def run_participant(
    config: Config, pairs: Sequence[Pair], missing: Sequence[MissingPair] = ()
) -> int:
    """Register every pair with every method and write the derivatives.

    Returns:
        0 when every (pair, method) row is ``ok``, 65 when some failed.
        With ``config.stop_on_first_crash``, subjects run one after the other (one workflow
        each, in label order) and the run returns 65 right after the first subject with a
        failed row; later subjects are not run.
    """
    output_dir = Path(config.output_dir)
    use_work_dir_for_state(config.work_dir)
    log_path = setup_logging(_log_dir(config), verbose=config.verbose)
    config.save(_log_dir(config) / "config.json")
    derivatives.write_dataset_description(output_dir, source=Path(config.bids_dir))
    LOGGER.info(
        "%d pair(s) x %d method(s); work dir %s; log %s",
        len(pairs),
        len(config.methods),
        config.work_dir,
        log_path,
    )

    by_subject: dict[str, list[PairRecord]] = defaultdict(list)
    missing = list(missing)
    label_table = _label_table(config)
    for pair in pairs:
        try:
            digest = pair_inputs_sha256(pair, label_table)
        except OSError as exc:  # vanished or unreadable since the query: this pair fails
            missing.append(_unreadable(pair, exc))
            continue
        record = replace(pair, bids_dir=str(config.bids_dir), inputs_sha256=digest)
        by_subject[pair.subject].append(record)
    # A run killed mid-write leaves hidden temporaries; only this run's subjects are
    # cleaned, since other runs (a SLURM array) may be writing other subjects right now.
    for subject in {*by_subject, *(m.subject for m in missing)}:
        stale = remove_stale_temporaries(output_dir / f"sub-{subject}")
        if stale:
            LOGGER.info(
                "sub-%s: removed %d temporary file(s) of an interrupted run", subject, stale
            )

    if config.validate_bids:
        from mmreg.bids_app.validator import validate_bids

        state = Path(config.work_dir) / ".state" / "deno"
        validate_bids(Path(config.bids_dir), _log_dir(config), cache_dir=state)
    models: dict[str, dict[str, str]] = {}
    if by_subject:
        # ANTs reads its thread count once per process: fix it before anything runs.
        limit_threads(config.omp_nthreads)
        models = model_records(config)
        if models:
            atomic_write_text(_log_dir(config) / "models.json", json.dumps(models, indent=2))
    missing_rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in missing:
        for method in config.methods:
            missing_rows[item.subject].append(
                derivatives.missing_row(
                    item.subject,
                    item.session,
                    item.fixed_label,
                    item.moving_label,
                    method,
                    item.reason,
                )
            )

    order = sorted({*by_subject, *missing_rows})
    # One workflow for every subject; or, with --stop-on-first-crash, one per subject in
    # label order, ending the run after the first subject with a failed row.
    batches = [[s] for s in order] if config.stop_on_first_crash else [order]
    n_failed = total = 0
    for position, batch in enumerate(batches):
        with_pairs = [s for s in batch if s in by_subject]
        outcomes = _run_workflow(
            config,
            {s: by_subject[s] for s in with_pairs},
            {s: missing_rows[s] for s in with_pairs if s in missing_rows},
            models,
            log_path,
        )
        if outcomes is None:
            return EXIT_SOFTWARE
        for subject in batch:
            if subject not in outcomes:  # no pair could run: only the sink's writing is left
                outcomes[subject] = derivatives.write_subject_outputs(
                    output_dir, subject, [], [], missing_rows[subject]
                )
            n_failed += _log_outcome(outcomes[subject])
            total += len(outcomes[subject].rows)
        if n_failed and config.stop_on_first_crash:
            left = order[position + 1 :]
            shown = ", ".join(f"sub-{s}" for s in left[:5]) + (", ..." if len(left) > 5 else "")
            LOGGER.error(
                "--stop-on-first-crash: stopping after sub-%s failed; %d subject(s) not run%s",
                batch[0],
                len(left),
                f" ({shown})" if left else "",
            )
            break
    LOGGER.info("%d of %d registration(s) ok; results in %s", total - n_failed, total, output_dir)
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def _run_workflow(
    config: Config,
    subjects: Mapping[str, list[PairRecord]],
    missing_rows: Mapping[str, list[dict[str, Any]]],
    models: dict[str, dict[str, str]],
    log_path: Path | None,
) -> dict[str, SubjectOutcome] | None:
    """Run the participant workflow (its sinks write each subject's derivatives).

    Returns:
        What each subject's sink wrote, or ``None`` when the workflow engine failed (logged).
    """
    from mmreg.provenance import code_fingerprint
    from mmreg.workflows.participant import init_participant_wf

    if not subjects:
        return {}
    cache_root = Path(config.work_dir)
    cache_root.mkdir(parents=True, exist_ok=True)
    worker_kwargs: dict[str, Any] = {}
    if config.worker == "cf":
        worker_kwargs["n_procs"] = max(1, config.nprocs)
    elif config.worker == "slurm":
        worker_kwargs.update(slurm_worker_kwargs(config.worker_args))
    n_registrations = sum(len(r) for r in subjects.values()) * len(config.methods)
    granularity = config.granularity_for(len(subjects))
    # A second pass only when a cached result turned out to be gone or damaged.
    for attempt in range(2):
        wf = init_participant_wf(
            subjects=list(subjects.values()),
            methods=list(config.methods),
            spacing=config.resolution,
            mask=config.mask,
            prealign=config.prealign,
            coronal_slice=config.coronal_slice,
            seed=config.random_seed,
            device=config.device,
            threads=config.omp_nthreads,
            label_table=_label_table(config),
            models=models,
            code=code_fingerprint(),
            granularity=granularity,
            cache_root=config.work_dir,
            # Side by side on this machine, each subject job runs its tasks one at a time.
            inner_procs=1 if config.worker == "cf" else 0,
            output_dir=config.output_dir,
            # A new run (or a second pass) writes every subject's derivatives again.
            run_id=f"{config.run_id}/{attempt}",
            missing_rows=missing_rows,
        )
        for folder, why in purge_corrupt(cache_root):
            LOGGER.info("work dir: recomputing %s (%s)", folder.name, why)
        remove_stale_engine_locks(cache_root)
        # Cached workflow results only point at task results, and an interrupted run
        # leaves them half-written; task results are what the cache keeps.
        forget_workflows(cache_root)
        started = time.time()
        try:
            with _Progress(cache_root, n_registrations):
                outputs = wf(worker=config.worker, cache_root=cache_root, **worker_kwargs)
        except KeyboardInterrupt:
            stop_workers()
            raise
        except Exception as exc:
            logging.getLogger("mmreg.engine").debug("workflow failed", exc_info=True)
            reason, source = engine_failure_reason(exc, cache_root, since=started)
            LOGGER.error(
                "the workflow engine failed: %s; details in %s",
                reason,
                f"{source} and {log_path}" if source else log_path,
            )
            return None
        outcomes = [SubjectOutcome.from_dict(o) for o in outputs.rows]
        damaged = [folder for o in outcomes for folder in o.damaged]
        if not damaged or attempt:
            break
        LOGGER.info("work dir: %d cached result(s) gone or damaged; recomputing", len(damaged))
        for work_folder in damaged:
            shutil.rmtree(work_folder, ignore_errors=True)
    return {o.subject: o for o in outcomes}


def _log_outcome(outcome: SubjectOutcome) -> int:
    """Log a subject's warnings, failures and tracebacks; the number of failed rows."""
    log = logging.getLogger("mmreg.results")
    for pair_id, method, text in outcome.tracebacks:
        log.debug("%s %s traceback:\n%s", pair_id, method, text)
    n_failed = 0
    for row in outcome.rows:
        where = f"sub-{outcome.subject} {row['moving']}->{row['fixed']} {row['method']}"
        if row.get("warnings"):
            LOGGER.warning("%s: %s", where, row["warnings"])
        if row["status"] != "ok":
            n_failed += 1
            LOGGER.warning("%s failed: %s", where, row["error"])
    return n_failed


#: A line that states an error: ``ValueError: ...``, ``slurmstepd: error: ... CANCELLED ...``.
_ERROR_LINE = re.compile(
    r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b|Fatal Python error|\S+: error:"
    r"|.*\b(Killed|CANCELLED|TIMEOUT|OUT_OF_MEMORY|oom-kill)\b)"
)
#: Pydra's wrappers around the real error, never the reason themselves.
_WRAPPER_LINE = re.compile(r"Workflow job .* failed with errors|unknown reason - TODO")


#: Between chained tracebacks; the first one holds the root cause.
_CHAINED = re.compile(
    r"^(During handling of the above exception|The above exception was the direct cause)",
    re.MULTILINE,
)


def _reason_line(text: str) -> str | None:
    """The line of ``text`` that states the first error (a traceback's last line), or None."""
    for part in (_CHAINED.split(text)[0], text):
        lines = [line.strip() for line in part.splitlines() if line.strip()]
        for line in reversed(lines):
            if _ERROR_LINE.match(line) and not _WRAPPER_LINE.search(line):
                return line
    return None


def engine_failure_reason(
    exc: BaseException, cache_root: Path, *, since: float
) -> tuple[str, Path | None]:
    """One line saying why the workflow engine failed, and the file with the details.

    The engine wraps a task's failure in one RuntimeError per enclosing workflow, and for
    a failed SLURM job only says "Job failed (unknown reason - TODO)" unless the second to
    last line of the job's ``.err`` says more. The real reason is, in this order, in the
    crash report a task that raised left (:data:`mmreg.tasks.define.CRASH_REPORT`), in a
    SLURM job's ``.err`` file (its stderr: the job died, was killed, out of memory, Python
    did not start), or in the exception with its causes and notes (e.g. sbatch refused
    the job). Only files written since ``since`` (the run's start) count. The full text
    goes to the ``mmreg.engine`` log.
    """
    from mmreg.tasks.define import CRASH_REPORT

    log = logging.getLogger("mmreg.engine")
    candidates = [
        *cache_root.glob(f"*/{CRASH_REPORT}"),
        *cache_root.glob("slurm_scripts/*/slurm-*.err"),
    ]
    recent = []
    for path in candidates:
        with contextlib.suppress(OSError):
            if path.stat().st_mtime >= since - 5 and path.stat().st_size:
                recent.append(path)
    # Tracebacks before job logs (they are the more precise), then the earliest failure.
    recent.sort(key=lambda p: (p.name != CRASH_REPORT, p.stat().st_mtime))
    for path in recent:
        try:
            text = path.read_text(errors="replace")
        except OSError:  # gone meanwhile: try the next one
            continue
        reason = _reason_line(text)
        if reason:
            log.debug("first failure, from %s:\n%s", path, text)
            return " ".join(reason.split())[:300], path
    text = "".join(traceback.format_exception(exc))
    reason = _reason_line(text) or f"{type(exc).__name__}: {exc}"
    return " ".join(reason.split())[:300], None


def stop_workers() -> None:
    """End the worker processes of an interrupted run at once, quietly.

    They got the same Ctrl-C, but a registration inside C++ (ANTs) would finish first and
    the run would wait for it; and the engine's abandoned coroutines would print
    tracebacks at exit. Nothing they computed is lost: finished tasks are cached.
    """
    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(timeout=5)
    sys.unraisablehook = lambda unraisable: None


def pair_inputs_sha256(pair: Pair, label_table: str | None) -> str:
    """sha256 over every file a pair's tasks read: images, channel siblings, ground truth.

    Raises:
        OSError: When one of them cannot be read.
    """
    from mmreg.imaging.planar import channel_siblings

    images = [p for path in (pair.fixed, pair.moving) for p in channel_siblings(path)]
    truth = (pair.fixed_dseg, pair.moving_dseg, pair.fixed_landmarks, pair.moving_landmarks)
    return files_sha256([*images, *truth, label_table])


def _unreadable(pair: Pair, exc: OSError) -> MissingPair:
    name = Path(exc.filename).name if exc.filename else "an input file"
    reason = f"{name}: {exc.strerror or exc}"
    return MissingPair(pair.subject, pair.session, pair.fixed_label, pair.moving_label, reason)


def model_records(config: Config) -> dict[str, dict[str, str]]:
    """Path and sha256 of the weights of every learned family the run's methods use.

    Raises:
        UsageError: When weights are missing or fail their sha256 check (before any task).
    """
    records = check_methods(config.methods, config.models)
    for family, record in records.items():
        LOGGER.info("%s weights: %s (sha256 %s)", family, record["path"], record["sha256"][:12])
    return records


def _label_table(config: Config) -> str | None:
    if not config.ground_truth:
        return None
    table = Path(config.ground_truth) / "dseg.tsv"
    return str(table) if table.exists() else None


def run_group(config: Config) -> int:
    """Aggregate participant CSVs into ``group/`` and write the HTML report."""
    from mmreg.reports.group import run_group_level

    use_work_dir_for_state(config.work_dir)
    setup_logging(_log_dir(config), verbose=config.verbose)
    config.save(_log_dir(config) / "config.json")
    paths = run_group_level(
        Path(config.output_dir),
        bids_dir=Path(config.bids_dir),
        matching=config.matching,
        models=config.models,
        device=config.device,
    )
    LOGGER.info("group results: %s", ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


#: Demo datasets and their default largest pose rotation (degrees).
DEMO_DATASETS = ("brain", "wholebody")
DEMO_MAX_ROTATION = {"brain": 20.0, "wholebody": 4.0}


def run_demo(
    *,
    out: Path,
    dataset: str = "brain",
    subjects: int = 3,
    seed: int = 0,
    methods: Sequence[str] = ("ants-affine",),
    models: dict[str, str] | None = None,
    max_rotation: float | None = None,
    worker: str = "cf",
    worker_args: dict[str, str] | None = None,
    nprocs: int = 1,
    job_granularity: str = "auto",
    omp_nthreads: int = 1,
    device: str = "auto",
    verbose: int = 0,
) -> int:
    """Generate a demo BIDS dataset in ``out/bids``, then run both levels on it.

    Returns:
        The participant level's exit code (0, or 65 if some pairs failed).
    """
    from mmreg.bids_app.query import find_pairs

    if dataset not in DEMO_DATASETS:
        raise UsageError(f"--dataset {dataset}: choose one of {', '.join(DEMO_DATASETS)}")
    bids_dir = out / "bids"
    t0 = time.perf_counter()
    if max_rotation is None:
        max_rotation = DEMO_MAX_ROTATION[dataset]
    # Beyond 45 degrees the pose is drawn over the full circle about a random axis.
    large = max_rotation > 45.0
    moving: tuple[dict[str, str], ...]
    if dataset == "wholebody":
        from mmreg.imaging.phantoms.wholebody_dataset import (
            FIXED_FILTER,
            MOVING_FILTER,
            write_wholebody_dataset,
        )

        write_wholebody_dataset(
            bids_dir,
            n_subjects=subjects,
            seed=seed,
            max_rotation_deg=max_rotation,
            large_rotations=large,
        )
        fixed, moving = dict(FIXED_FILTER), (dict(MOVING_FILTER),)
    else:
        from mmreg.imaging.phantoms.brain_dataset import write_demo_dataset

        write_demo_dataset(
            bids_dir,
            n_subjects=subjects,
            seed=seed,
            max_rotation_deg=max_rotation,
            large_rotations=large,
        )
        fixed, moving = {"suffix": "T1w"}, ({"suffix": "T2w"}, {"suffix": "PDw"})
    LOGGER.info(
        "demo dataset: %d subject(s) in %s (%.1f s)", subjects, bids_dir, time.perf_counter() - t0
    )
    config = Config(
        bids_dir=str(bids_dir),
        output_dir=str(bids_dir / "derivatives" / "mmreg"),
        analysis_level="participant",
        ground_truth=str(bids_dir / "derivatives" / "ground-truth"),
        fixed=fixed,
        moving=moving,
        coronal_slice=dataset == "wholebody",
        methods=tuple(methods),
        models=models or {},
        work_dir=str(out / "work"),
        worker=worker,
        worker_args=worker_args or {},
        nprocs=nprocs,
        job_granularity=job_granularity,
        omp_nthreads=omp_nthreads,
        random_seed=seed,
        device=device,
        validate_bids=False,  # generated here; DXA and the like are not BIDS suffixes anyway
        verbose=verbose,
    )
    pairs, missing = find_pairs(config)
    status = run_participant(config, pairs, missing)
    if status not in (EXIT_OK, EXIT_SOME_FAILED):
        return status
    run_group(config.replace(analysis_level="group"))
    LOGGER.info("report: %s", Path(config.output_dir) / "group" / "report.html")
    return status
