"""The ``mmreg`` command line (the BIDS-App contract in ``ARCHITECTURE.md``).

Three forms share one entry point::

    mmreg BIDS_DIR OUTPUT_DIR {participant,group} [options]
    mmreg demo --out DIR [options]
    mmreg train ...

The first word decides the parser, because argparse cannot mix a positional
form with subcommands. This module only parses, validates and builds the
:class:`~mmreg.bids_app.config.Config` and pair list; running is
:mod:`mmreg.bids_app.run`'s job (imported lazily, so ``--help`` and
``--version`` stay fast).

Exit codes: 0 ok, 64 bad usage, 66 input folder missing, 16 input not BIDS,
18 filters selected no files, 65 some pairs failed, 70 internal error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import mmreg
from mmreg.bids_app.config import (
    DEVICES,
    GRANULARITIES,
    SLURM_OPTIONS,
    WORKER_ARG_KEYS,
    WORKERS,
    Config,
)
from mmreg.bids_app.exit_codes import (
    EXIT_NO_INPUT,
    EXIT_NO_MATCH,
    EXIT_NOT_BIDS,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_USAGE,
)
from mmreg.bids_app.ownership import check_demo_dir, check_output_dir, check_writable_folder
from mmreg.bids_app.parsing import Parser, ParserExit, no_exit, positive_int
from mmreg.errors import InputError, MmregError, UsageError
from mmreg.imaging.preprocess import DEFAULT_PREALIGN, DEFAULT_SPACING, PREALIGN_MODES
from mmreg.interrupts import EXIT_INTERRUPTED, Interrupted, interrupts_watched
from mmreg.models import parse_models
from mmreg.runtime import usable_cpus

#: The default when --methods is not given: robust across contrasts and poses.
DEFAULT_METHODS = ("ants-affine",)
#: The demo shows the baseline, an MI baseline, and affine and deformable ANTs.
#: What ``mmreg demo`` runs per dataset when ``--methods`` is not given.
DEMO_METHODS = {
    "brain": ("identity", "sitk-rigid", "ants-affine", "ants-syn"),
    "wholebody": (
        "identity",
        "sitk-rigid",
        "ants-rigid",
        "contrastive-dense",
        "contrastive-salient",
    ),
}

SUBCOMMANDS = ("demo", "train")
LOG = logging.getLogger("mmreg.bids_app.cli")


def _exit_code(error: MmregError) -> int:
    """The contract's exit code for an error, by class (most specific first)."""
    from mmreg.bids_app import query

    # Lazy: query imports pybids-adjacent code; the mapping is only needed on failure.
    codes: dict[type[MmregError], int] = {
        query.InputDirMissingError: EXIT_NO_INPUT,
        query.NotBidsError: EXIT_NOT_BIDS,
        query.NoMatchError: EXIT_NO_MATCH,
        UsageError: EXIT_USAGE,
        InputError: EXIT_NO_INPUT,  # an input the run cannot use at all (no results, ...)
    }
    for cls in type(error).__mro__:
        code = getattr(cls, "exit_code", None)
        if isinstance(code, int):
            return code
        if cls in codes:
            return codes[cls]
    return EXIT_SOFTWARE  # only contract codes leave mmreg


#: One line per method for ``--help`` (a name missing here is listed without one).
METHOD_HELP: dict[str, str] = {
    "identity": "no registration: the header alignment (after --prealign), the baseline",
    "sitk-rigid": "SimpleITK rigid, Mattes mutual information",
    "sitk-affine": "SimpleITK rigid then affine, Mattes mutual information",
    "ants-rigid": "ANTs rigid, Mattes mutual information",
    "ants-affine": "ANTs affine, Mattes mutual information (the default)",
    "ants-ai": "ANTs multi-start rotation search, then ants-affine (large misalignment)",
    "ants-syn": "ANTs affine then SyN deformable, Mattes mutual information",
    "keymorph-rigid": "learned keypoints (KeyMorph), rigid fit",
    "keymorph-affine": "learned keypoints (KeyMorph), affine fit",
    "keymorph-tps": "learned keypoints (KeyMorph), thin-plate spline",
    "contrastive-dense": "2D DXA to MR, contrastive features, dense rigid search",
    "contrastive-salient": "2D DXA to MR, contrastive features, salient points + RANSAC",
    "contrastive-refine": "contrastive-salient plus a learned rigid correction",
    "mind-io": "deformable: MIND-SSC features, convex search then Adam (chain after an affine)",
    "dns-io": "deformable: learned DNS features (Mok et al.), convex search then Adam",
    "suits": "deformable: learned per-modality features (SUITS), B-spline Demons descent",
    "mind-suits": "deformable: MIND-SSC features in the SUITS B-spline Demons descent",
}

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 64 bad usage (also a bad --bids-filter-file or --config-file); "
    "66 input folder missing; 16 input is not BIDS; 18 the filters or --session-label "
    "selected no files; 65 some pairs failed (with --stop-on-first-crash: at the first "
    "subject with a failure); 70 internal error or workflow engine failure; "
    "130 interrupted (Ctrl-C, SIGTERM; rerun to resume)."
)


def _methods_help() -> str:
    from mmreg.methods import available_methods

    names = available_methods()
    width = max(map(len, names), default=0)
    lines = [
        "methods (--methods NAME,NAME,...; A+B chains: A's transform initialises B;",
        "parameters per step: NAME:KEY=VALUE[:KEY=VALUE], e.g. ants-ai:search=30;",
        "an unknown key is an error that lists the method's keys):",
    ]
    lines += [f"  {n.ljust(width)}  {METHOD_HELP.get(n, '')}".rstrip() for n in names]
    return "\n".join(lines)


class _BidsAppParser(Parser):
    """The BIDS-App parser; its help ends with the methods (listed only when asked for)."""

    def format_help(self) -> str:
        wrapped = textwrap.fill(EXIT_CODES_HELP, width=min(99, shutil.get_terminal_size()[0]))
        self.epilog = f"{_methods_help()}\n\n{wrapped}"
        return super().format_help()


# ---------------------------------------------------------------------------------------------
# Value checks used as argparse types (argparse turns ValueError/ArgumentTypeError into 64)


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {value}")
    return value


#: Working resolutions that fit a registration in memory and still resolve anatomy (mm).
RESOLUTION_RANGE = (0.1, 20.0)


def _resolution(text: str) -> float:
    value = float(text)
    low, high = RESOLUTION_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g} mm, got {text}")
    return value


def _angle(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 180:
        raise argparse.ArgumentTypeError(f"must be between 0 and 180 degrees, got {text}")
    return value


def parse_worker_args(items: Sequence[str], worker: str) -> dict[str, str]:
    """``["partition=gpu", "poll=5"]`` -> ``{"partition": "gpu", "poll": "5"}``.

    A key given twice keeps the last value, except ``sbatch``, whose values add up.

    Raises:
        UsageError: Worker args for a worker other than slurm, an item without ``=``,
            an unknown key, an empty value, a bad ``poll``, or ``--error`` in ``sbatch``.
    """
    if not items:
        return {}
    if worker != "slurm":
        raise UsageError(f"--worker-args: only --worker slurm takes options (not {worker})")
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep:
            raise UsageError(f"--worker-args {item}: expected KEY=VALUE")
        if key not in WORKER_ARG_KEYS:
            raise UsageError(
                f"--worker-args {item}: unknown key {key!r}; use one of "
                + ", ".join(WORKER_ARG_KEYS)
            )
        if not value:
            raise UsageError(f"--worker-args {item}: empty value")
        if key == "sbatch":
            # Pydra reads a failed job's reason from the --error file it names itself.
            if any(t in ("-e", "--error") or t.startswith("--error=") for t in value.split()):
                raise UsageError("--worker-args sbatch: --error is set by mmreg, leave it out")
            value = f"{parsed[key]} {value}" if key in parsed else value
        elif any(c.isspace() for c in value):
            raise UsageError(f"--worker-args {item}: the value may not contain spaces")
        if key == "poll" and not value.isdigit():
            raise UsageError(f"--worker-args {item}: poll must be whole seconds (0 or more)")
        parsed[key] = value
    return parsed


def task_slots(nprocs: int | None, omp_nthreads: int) -> int:
    """Parallel tasks: ``--nprocs``, or as many as fit the CPUs at ``--omp-nthreads`` each.

    Tasks x threads above the usable CPUs only slows everything down (and on a shared
    node steals other jobs' cores), so an explicit oversubscription gets a warning.
    """
    cpus = usable_cpus()
    if nprocs is None:
        return max(1, cpus // max(1, omp_nthreads))
    if nprocs * omp_nthreads > cpus:
        LOG.warning(
            "--nprocs %d x --omp-nthreads %d = %d threads on %d usable CPU(s): oversubscribed",
            nprocs,
            omp_nthreads,
            nprocs * omp_nthreads,
            cpus,
        )
    return nprocs


def default_methods() -> tuple[str, ...]:
    """What runs when ``--methods`` is not given."""
    return DEFAULT_METHODS


def parse_methods(
    specs: Sequence[str] | None, *, default: tuple[str, ...] = DEFAULT_METHODS
) -> tuple[str, ...]:
    """``["a,b+c", "d"]`` -> ``("a", "b+c", "d")``, each name checked against the registry.

    ``A+B`` chains: A's transform initialises B. Duplicates are dropped, order kept.

    Raises:
        UsageError: On an empty or unknown method name.
    """
    if not specs:
        return default
    from mmreg.methods import parse_methods as parse_registered

    return tuple(parse_registered(list(specs)))


# ---------------------------------------------------------------------------------------------
# Parsers


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution")
    group.add_argument(
        "--worker",
        choices=WORKERS,
        default="cf",
        help="Pydra worker: debug (serial, in process), cf (local processes), "
        "slurm (one job per task) (default: %(default)s)",
    )
    group.add_argument(
        "--worker-args",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="options for the slurm worker: "
        + ", ".join(f"{k} ({o})" for k, o in SLURM_OPTIONS.items())
        + ", poll (seconds between job checks), sbatch (raw sbatch options, quoted); "
        "e.g. partition=gpu time=02:00:00 mem=8G gres=gpu:1 sbatch='--nice=10'",
    )
    group.add_argument(
        "--job-granularity",
        choices=GRANULARITIES,
        default="auto",
        help="what one worker job runs: a single task, or a subject's whole pipeline; "
        "auto: subject for slurm, and for cf with a cohort (at least 4 subjects per process, "
        "or 2 with --nprocs 1: finished subjects appear while the run goes on); task "
        "otherwise (default: %(default)s)",
    )
    group.add_argument(
        "--nprocs",
        type=positive_int,
        default=None,
        metavar="N",
        help="parallel tasks for the cf worker (default: usable CPUs / --omp-nthreads)",
    )
    group.add_argument(
        "--omp-nthreads",
        type=positive_int,
        default=1,
        metavar="N",
        help="threads inside each task (ITK, torch); 1 keeps results bit-reproducible "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where learned methods run; results do not depend on it (default: %(default)s)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more messages; -vv adds third-party debug output",
    )


def _add_registration_options(group: argparse._ArgumentGroup) -> None:
    """Seed, working grid, pre-alignment and mask: the BIDS-App's and ``mmreg register``'s."""
    group.add_argument(
        "--random-seed",
        type=_seed,
        default=0,
        metavar="N",
        help="seed for every method (default: %(default)s)",
    )
    group.add_argument(
        "--resolution",
        type=_resolution,
        default=DEFAULT_SPACING,
        metavar="MM",
        help="isotropic working resolution in mm (default: %(default)s)",
    )
    group.add_argument(
        "--prealign",
        choices=PREALIGN_MODES,
        default=DEFAULT_PREALIGN,
        help="initial alignment: auto (keep the scanner's header alignment unless the "
        "centres of mass match the images clearly better), none, com (centres of mass), "
        "moments (principal axes) (default: %(default)s)",
    )
    group.add_argument(
        "--mask",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="restrict registration to a foreground mask (default: off)",
    )


def _add_model_option(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="FAMILY=PATH",
        help="weights for a learned method family, e.g. keymorph=my_model.pt (from "
        "'mmreg train'); at the group level, contrastive=PATH scores the subject matching; "
        "default: the shipped demo weights",
    )


def build_parser() -> argparse.ArgumentParser:
    """The BIDS-App parser: ``mmreg BIDS_DIR OUTPUT_DIR {participant,group} ...``."""
    parser = _BidsAppParser(
        prog="mmreg",
        description="Cross-modality registration of medical images (BIDS-App).\n"
        "Other forms: 'mmreg demo --out DIR' (generated data, end to end), "
        "'mmreg train ...' (fit a learned method),\n'mmreg register FIXED MOVING ...' "
        "(one pair outside BIDS).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mmreg {mmreg.__version__}")
    parser.add_argument("bids_dir", type=Path, metavar="BIDS_DIR", help="input BIDS dataset")
    parser.add_argument(
        "output_dir",
        type=Path,
        metavar="OUTPUT_DIR",
        help="output derivatives folder (inside BIDS_DIR only under "
        "derivatives/, e.g. BIDS_DIR/derivatives/mmreg)",
    )
    parser.add_argument(
        "analysis_level",
        choices=("participant", "group"),
        help="participant: register and evaluate each pair; "
        "group: aggregate participant results and write the report",
    )

    sel = parser.add_argument_group("selecting images")
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        action="extend",
        default=[],
        metavar="L",
        help="subject labels, with or without 'sub-', or a file listing them (one per line; "
        "'@FILE' for a file named like a label; participants.tsv works) (default: all)",
    )
    sel.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        action="extend",
        default=[],
        metavar="L",
        help="session labels, with or without 'ses-': only pairs of these sessions "
        "(a label with no image exits 18) (default: all sessions)",
    )
    sel.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        dest="bids_filter_file",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON file with one query per modality, as fMRIPrep's: "
        '{"fixed": {"suffix": "T1w", "acquisition": "mprage"}, "moving": {"suffix": "T2w"}} '
        "('moving' may be a list: several moving modalities); keys are BIDS entities, "
        "short (acq) or long (acquisition). --fixed/--moving given too take precedence "
        "key by key (one --moving applies to each moving query of the file)",
    )
    sel.add_argument(
        "--fixed",
        nargs="+",
        action="extend",
        default=None,
        metavar="ENTITY=VALUE",
        help="filter selecting the fixed image, with BIDS keys (suffix, acq, ses, "
        "run, ce, datatype, ...); any suffix, also non-BIDS ones such as US "
        "or DXA; without suffix= the suffix stays T1w (default: suffix=T1w)",
    )
    sel.add_argument(
        "--moving",
        nargs="+",
        action="append",
        default=None,
        metavar="ENTITY=VALUE",
        help="filter selecting moving images; repeat --moving for several "
        "modalities, each giving its own pairs; without suffix= the suffix "
        "stays T2w (default: suffix=T2w)",
    )
    sel.add_argument(
        "--ground-truth",
        type=Path,
        default=None,
        metavar="DIR",
        help="ground-truth derivatives (dseg label maps, landmark TSVs) "
        "(default: BIDS_DIR/derivatives/ground-truth when present)",
    )
    sel.add_argument(
        "--max-pairs",
        type=positive_int,
        default=None,
        metavar="N",
        help="register only the first N pairs (quick checks)",
    )

    reg = parser.add_argument_group("registration")
    reg.add_argument(
        "--methods",
        action="append",
        default=None,
        metavar="NAME,NAME,...",
        help="methods, comma separated; A+B chains initialise B with A's "
        f"transform (default: {','.join(DEFAULT_METHODS)})",
    )
    _add_model_option(reg)
    _add_registration_options(reg)
    reg.add_argument(
        "--coronal-slice",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="pair a 2D image (e.g. whole-body DXA) with a 3D one (Dixon MR) by registering "
        "it to the 3D image's mid-coronal slice along the spine (default: off)",
    )

    grp = parser.add_argument_group("group level")
    grp.add_argument(
        "--matching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="match 2D and 3D scans (whole-body DXA and Dixon MR) across subjects with the "
        "contrastive encoder and flag suspected subject swaps: group/matching.csv, "
        "group/matching_summary.csv (default: on; skipped without weights)",
    )

    run_ = parser.add_argument_group("run")
    run_.add_argument(
        "--config-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="rerun with the options of a saved run, OUTPUT_DIR/logs/<run-id>/config.json; "
        "BIDS_DIR OUTPUT_DIR and the level are still given, and every option given on the "
        "command line wins over the file's value (--fixed/--moving key by key)",
    )
    run_.add_argument(
        "--stop-on-first-crash",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="participant level: run subjects one after the other (one workflow each) and "
        "stop with exit 65 after the first subject with a failed registration; later "
        "subjects are not run (default: off, every subject runs)",
    )
    run_.add_argument(
        "--skip-bids-validation",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="participant level: do not run bids-validator-deno on BIDS_DIR first (its "
        "findings are reported, never fatal; full report in OUTPUT_DIR/logs/<run-id>/) "
        "(default: validate)",
    )

    parser.add_argument(
        "--work-dir",
        "-w",
        type=Path,
        default=None,
        metavar="DIR",
        help="cache of intermediate results; reruns reuse it (default: OUTPUT_DIR/work)",
    )
    _add_engine_options(parser)
    no_exit(parser)
    return parser


def build_register_parser() -> argparse.ArgumentParser:
    """``mmreg register FIXED MOVING --method M --out PREFIX``."""
    parser = Parser(
        prog="mmreg register",
        description="Register one pair of images outside BIDS, with the same preprocessing, "
        "methods, models and errors as the BIDS-App; writes PREFIX_xfm.{txt,h5} (ITK, "
        "fixed to moving points) and PREFIX_warped.nii.gz (the moving image on the fixed "
        "grid).",
    )
    parser.add_argument("fixed", type=Path, metavar="FIXED", help="fixed image (NIfTI)")
    parser.add_argument("moving", type=Path, metavar="MOVING", help="moving image (NIfTI)")
    parser.add_argument(
        "--method",
        required=True,
        metavar="M",
        help=f"one method or A+B chain (e.g. {DEFAULT_METHODS[0]}, ants-rigid+ants-syn)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="PREFIX", help="output path prefix"
    )
    parser.add_argument(
        "--moving-labels",
        type=Path,
        default=None,
        metavar="LABELS",
        help="a label map on the moving image's grid, also warped (nearest neighbour) to "
        "PREFIX_warped_labels.nii.gz",
    )
    reg = parser.add_argument_group("registration")
    _add_model_option(reg)
    _add_registration_options(reg)
    eng = parser.add_argument_group("execution")
    eng.add_argument(
        "--omp-nthreads",
        type=positive_int,
        default=1,
        metavar="N",
        help="threads (ITK, torch); 1 keeps results bit-reproducible (default: %(default)s)",
    )
    eng.add_argument("--device", choices=DEVICES, default="auto", help="for learned methods")
    eng.add_argument("-v", "--verbose", action="count", default=0, help="more messages")
    no_exit(parser)
    return parser


def build_demo_parser() -> argparse.ArgumentParser:
    """``mmreg demo --out DIR ...``."""
    parser = Parser(
        prog="mmreg demo",
        description="Generate a small BIDS dataset with ground truth in DIR/bids, then run "
        "the participant and group levels into DIR/bids/derivatives/mmreg.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for the demo dataset and results",
    )
    parser.add_argument(
        "--dataset",
        choices=("brain", "wholebody"),
        default="brain",
        help="kind of generated data (default: %(default)s)",
    )
    parser.add_argument(
        "--subjects",
        type=positive_int,
        default=3,
        metavar="N",
        help="number of subjects (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="N",
        help="seed of the data generator and the methods (default: %(default)s)",
    )
    parser.add_argument(
        "--methods",
        action="append",
        default=None,
        metavar="NAME,NAME,...",
        help="methods to run (default: "
        + "; ".join(f"{k}: {','.join(v)}" for k, v in DEMO_METHODS.items())
        + ")",
    )
    _add_model_option(parser)
    parser.add_argument(
        "--max-rotation",
        type=_angle,
        default=None,
        metavar="DEG",
        help="largest simulated misalignment rotation (default: 20 for brain, 4 for "
        "wholebody; above 45 the pose covers the full circle)",
    )
    _add_engine_options(parser)
    no_exit(parser)
    return parser


# ---------------------------------------------------------------------------------------------
# Checks that need the file system


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def check_output_location(bids_dir: Path, output_dir: Path, *, option: str = "OUTPUT_DIR") -> None:
    """Outputs may go inside BIDS_DIR only below ``BIDS_DIR/derivatives/<name>``.

    Raises:
        UsageError: For OUTPUT_DIR (or the work dir) equal to BIDS_DIR,
            elsewhere inside it, or equal to ``derivatives/`` itself.
    """
    bids = bids_dir.resolve()
    out = output_dir.resolve()
    derivatives = bids / "derivatives"
    if _inside(out, bids) and not (out != derivatives and _inside(out, derivatives)):
        raise UsageError(
            f"{option} {output_dir} is inside BIDS_DIR; use a folder outside it or below "
            f"{derivatives} (e.g. {derivatives / 'mmreg'})"
        )
    if _inside(bids, out):
        raise UsageError(f"{option} {output_dir} contains BIDS_DIR; choose another folder")


def _check_device(device: str) -> None:
    from mmreg.runtime import resolve_device

    resolve_device(device)  # a UsageError when cuda is asked for and there is none


def _check_worker(worker: str) -> None:
    if worker == "slurm":
        lacking = [tool for tool in ("sbatch", "sacct") if shutil.which(tool) is None]
        if lacking:
            raise UsageError(f"--worker slurm: {', '.join(lacking)} not found on PATH")


def _filters(
    args: argparse.Namespace,
) -> tuple[dict[str, str] | None, list[dict[str, str]] | None]:
    """The fixed and moving filters: a filter file's (or a saved config's) queries, with
    ``--fixed``/``--moving`` layered over them key by key; ``None``: the default."""
    from mmreg.bids_app import query

    base_fixed, base_moving = getattr(args, "saved_filters", (None, None))
    if args.bids_filter_file is not None:
        base_fixed, base_moving = query.read_filter_file(args.bids_filter_file)
    cli_fixed = query.parse_filter(args.fixed, option="--fixed") if args.fixed else None
    cli_moving = [query.parse_filter(m, option="--moving") for m in args.moving or []]
    fixed = base_fixed
    if cli_fixed is not None:
        fixed = query.merge_filter(base_fixed or {}, cli_fixed)
    moving = query.merge_moving_filters(base_moving or [], cli_moving) or None
    return fixed, moving


def _explicit_options(argv: Sequence[str]) -> set[str]:
    """The ``dest`` of every option given on the command line (defaults left out)."""
    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings]
    for action in options:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) & {a.dest for a in options}


def apply_config_file(args: argparse.Namespace, explicit: set[str]) -> argparse.Namespace:
    """Fill every option not in ``explicit`` from the saved config ``args.config_file``.

    The positional arguments are always the command line's. A work dir or ground truth
    that was the default of the saved run (OUTPUT_DIR/work, BIDS_DIR/derivatives/
    ground-truth) stays the default for the new folders. The saved filters act as a
    filter file under ``--fixed``/``--moving``, unless ``--bids-filter-file`` is given.

    Raises:
        UsageError: The file cannot be read or is not a saved mmreg config (64).
    """
    path: Path = args.config_file
    try:
        saved = Config.load(path)
    except OSError as exc:
        raise UsageError(f"--config-file {path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, TypeError, AttributeError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise UsageError(f"--config-file {path}: not a saved mmreg config ({message})") from None
    default_gt = str(Path(saved.bids_dir) / "derivatives" / "ground-truth")
    default_work = str(Path(saved.output_dir) / "work")
    values: dict[str, object] = {
        "participant_label": list(saved.participant_labels),
        "session_label": list(saved.session_labels),
        "ground_truth": (
            Path(saved.ground_truth)
            if saved.ground_truth and saved.ground_truth != default_gt
            else None
        ),
        "max_pairs": saved.max_pairs,
        "methods": list(saved.methods) or None,
        "random_seed": saved.random_seed,
        "resolution": saved.resolution,
        "prealign": saved.prealign,
        "mask": saved.mask,
        "coronal_slice": saved.coronal_slice,
        "matching": saved.matching,
        "work_dir": Path(saved.work_dir) if saved.work_dir != default_work else None,
        "worker": saved.worker,
        "worker_args": [f"{k}={v}" for k, v in saved.worker_args.items()],
        "job_granularity": saved.job_granularity,
        "nprocs": saved.nprocs,
        "omp_nthreads": saved.omp_nthreads,
        "device": saved.device,
        "stop_on_first_crash": saved.stop_on_first_crash,
        "skip_bids_validation": not saved.validate_bids,
        "verbose": saved.verbose,
    }
    for dest, value in values.items():
        if dest not in explicit:
            setattr(args, dest, value)
    if "model" not in explicit and saved.models:
        from mmreg.methods import model_families

        # Weights only for the families the (maybe overridden) methods still use.
        used = set(model_families(parse_methods(args.methods)))
        used |= {"contrastive"} if args.analysis_level == "group" else set()
        args.model = [f"{k}={v}" for k, v in saved.models.items() if k in used] or None
    args.saved_filters = (dict(saved.fixed), [dict(m) for m in saved.moving])
    return args


class _FilterFields(TypedDict, total=False):
    """The :class:`Config` filter fields a run sets (left out: the defaults)."""

    fixed: dict[str, str]
    moving: tuple[dict[str, str], ...]


def config_from_args(args: argparse.Namespace) -> Config:
    """Validate the parsed arguments against the file system and build the Config.

    Raises:
        InputDirMissingError: BIDS_DIR or --ground-truth missing (66).
        NotBidsError: BIDS_DIR without dataset_description.json (16).
        UsageError: Anything else wrong with the arguments (64).
    """
    from mmreg.bids_app import query

    bids_dir = query.check_bids_dir(args.bids_dir).resolve()
    # Methods, parameters, weights and the worker first: a mistake there costs no indexing
    # and creates no folder.
    methods = parse_methods(args.methods)
    models = parse_models(
        args.model, methods, extra=("contrastive",) if args.analysis_level == "group" else ()
    )
    if args.analysis_level == "participant":
        from mmreg.bids_app.models import check_methods

        check_methods(methods, models)
    _check_worker(args.worker)
    worker_args = parse_worker_args(args.worker_args, args.worker)
    _check_device(args.device)
    output_dir = args.output_dir.resolve()
    check_output_location(bids_dir, output_dir)
    work_dir = (args.work_dir or output_dir / "work").resolve()
    check_output_location(bids_dir, work_dir, option="--work-dir")
    check_output_dir(output_dir, work_dir=work_dir)
    check_writable_folder(work_dir, option="--work-dir")
    ground_truth: Path | None
    if args.ground_truth is not None:
        given: Path = args.ground_truth.resolve()
        if not given.is_dir():
            raise query.InputDirMissingError(f"ground-truth folder not found: {given}")
        ground_truth = given
    else:
        default_gt = bids_dir / "derivatives" / "ground-truth"
        ground_truth = default_gt if default_gt.is_dir() else None
    fixed, moving = _filters(args)
    extra: _FilterFields = {}
    if fixed is not None:
        extra["fixed"] = fixed
    if moving is not None:
        # Two identical --moving filters would only duplicate pairs.
        extra["moving"] = tuple({repr(sorted(m.items())): m for m in moving}.values())
    return Config(
        bids_dir=str(bids_dir),
        output_dir=str(output_dir),
        analysis_level=args.analysis_level,
        participant_labels=query.normalize_participant_labels(args.participant_label),
        session_labels=query.normalize_session_labels(args.session_label),
        ground_truth=str(ground_truth) if ground_truth else None,
        methods=methods,
        # The group level's subject matching takes contrastive weights whatever the methods.
        models=models,
        work_dir=str(work_dir),
        worker=args.worker,
        worker_args=worker_args,
        nprocs=task_slots(args.nprocs, args.omp_nthreads),
        job_granularity=args.job_granularity,
        omp_nthreads=args.omp_nthreads,
        random_seed=args.random_seed,
        device=args.device,
        resolution=args.resolution,
        prealign=args.prealign,
        mask=args.mask,
        coronal_slice=args.coronal_slice,
        max_pairs=args.max_pairs,
        matching=args.matching,
        stop_on_first_crash=args.stop_on_first_crash,
        validate_bids=not args.skip_bids_validation,
        verbose=args.verbose,
        **extra,
    )


# ---------------------------------------------------------------------------------------------
# Entry points


def _setup_logging(verbose: int) -> None:
    from mmreg.bids_app.logs import setup_logging

    setup_logging(None, verbose=verbose)


def _main_bids_app(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.config_file is not None:
        args = apply_config_file(args, _explicit_options(argv))
    _setup_logging(args.verbose)
    config = config_from_args(args)
    from mmreg.bids_app import run

    if config.analysis_level == "group":
        return run.run_group(config)
    from mmreg.bids_app.query import find_pairs

    pairs, missing = find_pairs(config)
    return run.run_participant(config, pairs, missing)


def _main_demo(argv: Sequence[str]) -> int:
    args = build_demo_parser().parse_args(argv)
    _setup_logging(args.verbose)
    out = args.out.resolve()
    check_writable_folder(out, option="--out")
    check_demo_dir(out / "bids")
    methods = parse_methods(args.methods, default=DEMO_METHODS[args.dataset])
    models = parse_models(args.model, methods, extra=("contrastive",))  # the group's matching
    _check_worker(args.worker)
    worker_args = parse_worker_args(args.worker_args, args.worker)
    _check_device(args.device)
    from mmreg.bids_app import run

    return run.run_demo(
        out=out,
        dataset=args.dataset,
        subjects=args.subjects,
        seed=args.seed,
        methods=methods,
        models=models,
        max_rotation=args.max_rotation,
        worker=args.worker,
        worker_args=worker_args,
        nprocs=task_slots(args.nprocs, args.omp_nthreads),
        job_granularity=args.job_granularity,
        omp_nthreads=args.omp_nthreads,
        device=args.device,
        verbose=args.verbose,
    )


def _main_register(argv: Sequence[str]) -> int:
    args = build_register_parser().parse_args(argv)
    _setup_logging(args.verbose)
    methods = parse_methods([args.method])
    if len(methods) != 1:
        raise UsageError("--method takes one method or A+B chain, not a list")
    method = methods[0]
    models = parse_models(args.model, [method])
    _check_device(args.device)
    from mmreg.single import register_files

    result = register_files(
        args.fixed,
        args.moving,
        method,
        args.out,
        moving_labels=args.moving_labels,
        spacing=args.resolution,
        prealign=args.prealign,
        mask=args.mask,
        seed=args.random_seed,
        device=args.device,
        threads=args.omp_nthreads,
        models=models,
    )
    written = [result.transform, result.warped, result.warped_labels]
    LOG.info("%s in %.1f s: %s", method, result.runtime_s, ", ".join(str(p) for p in written if p))
    return EXIT_OK


def _main_train(argv: Sequence[str]) -> int:
    from mmreg.bids_app.train import main_train

    return main_train(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (never raises for expected errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = sum(a.count("v") for a in argv if a.startswith("-v") and set(a[1:]) == {"v"})
    verbose += argv.count("--verbose")
    try:
        # SIGTERM (kill, scancel) stops a run as Ctrl-C does: exit 130, nothing recorded.
        with interrupts_watched():
            if argv and argv[0] == "demo":
                return _main_demo(argv[1:])
            if argv and argv[0] == "train":
                return _main_train(argv[1:])
            if argv and argv[0] == "register":
                return _main_register(argv[1:])
            return _main_bids_app(argv)
    except ParserExit as done:
        return done.status
    except MmregError as error:
        print(f"mmreg: error: {error}", file=sys.stderr)
        return _exit_code(error)
    except KeyboardInterrupt as stop:
        how = str(stop) if isinstance(stop, Interrupted) else "interrupted"
        print(
            f"mmreg: {how}; finished work is kept in the work dir: rerun the same "
            "command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as error:  # a bug: one line unless -v asked for details
        if verbose:
            raise
        message = " ".join(str(error).split())[:300]
        print(
            f"mmreg: error: internal error ({type(error).__name__}: {message}); "
            "rerun with -v for the traceback",
            file=sys.stderr,
        )
        return EXIT_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
