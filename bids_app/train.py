"""``mmreg train TARGET BIDS_DIR --out MODEL.pt ...``: fit a learned method on a BIDS dataset.

Training data are chosen exactly like the participant level's pairs (``--fixed``,
``--moving``, ``--participant-label``, ``--ground-truth``), so whatever a user can
register they can also train on. Each target names a settings dataclass; its fields
become options of the target's parser (``n_keypoints`` -> ``--n-keypoints``), so
a new hyperparameter needs no CLI code.

A target is a :class:`TrainTarget`: the dotted paths of its settings class and its
training function, imported only when that target runs (torch is heavy)::

    train(pairs: list[dict], *, out: Path, settings: Settings, device: str,
          progress: bool) -> Path

``pairs`` are :meth:`mmreg.bids_app.query.Pair.to_dict` records (paths of both images,
and of their ground-truth label maps and landmarks when present).

A target with ``inputs="images"`` (``dns``) trains on single images instead: every
anatomical NIfTI image of the dataset (``--suffix`` and ``--participant-label`` narrow
it down), and its function takes ``images: list[Path]`` in place of ``pairs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmreg.errors import UsageError
from mmreg.runtime import DEVICES

LOG = logging.getLogger("mmreg.train")


@dataclass(frozen=True)
class TrainTarget:
    """One ``mmreg train`` target.

    Attributes:
        name: The CLI name (``keymorph``).
        description: One line for ``mmreg train --help``.
        settings: ``module:Class`` of the settings dataclass.
        function: ``module:function`` that trains and writes the checkpoint.
        fixed: Default ``--fixed`` filter.
        moving: Default ``--moving`` filters.
        registers: The weights are a registration method's (``--model NAME=...``).
        inputs: ``"pairs"`` (chosen with ``--fixed/--moving``), ``"images"``
            (every anatomical image, narrowed with ``--suffix``) or ``"either"``
            (pairs, or with ``--suffix`` images with their ground-truth label maps,
            as :class:`mmreg.bids_app.query.LabelledImage` records).
    """

    name: str
    description: str
    settings: str
    function: str
    fixed: tuple[str, ...] = ("suffix=T1w",)
    moving: tuple[tuple[str, ...], ...] = (("suffix=T2w",),)
    registers: bool = True
    inputs: str = "pairs"

    def load(self) -> tuple[type, Callable[..., Path]]:
        """The settings class and the training function (imports the method package)."""
        return _attribute(self.settings), _attribute(self.function)


def _attribute(dotted: str) -> Any:
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


TARGETS: dict[str, TrainTarget] = {
    "keymorph": TrainTarget(
        name="keymorph",
        description="KeyMorph keypoint detector (keymorph-rigid/-affine/-tps)",
        settings="mmreg.methods.keymorph.train:KeyMorphTrainSettings",
        function="mmreg.methods.keymorph.train:train_from_pairs",
        moving=(("suffix=T2w",), ("suffix=PDw",)),
        inputs="either",
    ),
    "contrastive": TrainTarget(
        name="contrastive",
        description="contrastive DXA/MR-slice encoders (contrastive-dense/-salient)",
        settings="mmreg.methods.contrastive.train:ContrastiveTrainSettings",
        function="mmreg.methods.contrastive.train:train_contrastive",
        fixed=("suffix=DXA", "rec=bone"),
        moving=(("suffix=T1w", "acq=dixon", "rec=fat"),),
    ),
    "contrastive-refine": TrainTarget(
        name="contrastive-refine",
        description="rigid refinement regressor on contrastive features (contrastive-refine)",
        settings="mmreg.methods.contrastive.refine:RefineTrainSettings",
        function="mmreg.methods.contrastive.refine:train_refine",
        fixed=("suffix=DXA", "rec=bone"),
        moving=(("suffix=T1w", "acq=dixon", "rec=fat"),),
    ),
    "unet-transfer": TrainTarget(
        name="unet-transfer",
        description="2D U-Net for MR slices on DXA labels moved by registration",
        settings="mmreg.segmentation.unet_transfer:UNetTransferSettings",
        function="mmreg.segmentation.unet_transfer:train_unet_transfer",
        fixed=("suffix=DXA", "rec=bone"),
        moving=(("suffix=T1w", "acq=dixon", "rec=fat"),),
        registers=False,
    ),
    "dns": TrainTarget(
        name="dns",
        description="DNS modality-agnostic feature network (dns-io), on single images",
        settings="mmreg.methods.features.dns_train:DNSTrainSettings",
        function="mmreg.methods.features.dns_train:train_dns",
        fixed=(),
        moving=(),
        inputs="images",
    ),
    "suits": TrainTarget(
        name="suits",
        description="SUITS per-modality feature networks (suits), on pairs with label maps",
        settings="mmreg.methods.features.suits_train:SUITSTrainSettings",
        function="mmreg.methods.features.suits_train:train_suits",
    ),
    "segguided": TrainTarget(
        name="segguided",
        description="segmentation-guided registration from the labels of one modality "
        "(segguided; needs --labels-from)",
        settings="mmreg.methods.segguided.train:SegGuidedTrainSettings",
        function="mmreg.methods.segguided.train:train_segguided",
    ),
}

#: Suffixes of anatomical files that are not images to learn from.
_NOT_IMAGES = frozenset({"dseg", "probseg", "mask", "label", "roi"})


# --- options from a settings dataclass ---------------------------------------------------------


def _field_type(cls: type, field: dataclasses.Field[Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kind = hints.get(field.name, str)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def add_settings_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name`` option per field of the dataclass ``cls`` (bool: ``--x/--no-x``)."""
    group = parser.add_argument_group(f"{cls.__name__} (training settings)")
    for field in dataclasses.fields(cls):
        if not field.init or field.name.startswith("_"):
            continue
        default = (
            field.default
            if field.default is not dataclasses.MISSING
            else field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else None
        )
        kind = _field_type(cls, field)
        helptext = field.metadata.get("help", "")
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            group.add_argument(
                flag,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{helptext} (default: {default})",
            )
        elif kind in (int, float, str):
            choices = field.metadata.get("choices")
            group.add_argument(
                flag,
                dest=field.name,
                type=kind,
                default=default,
                choices=choices,
                metavar=None if choices else kind.__name__.upper(),
                help=f"{helptext} (default: {default})",
            )
        # Structured fields (tuples, nested settings) keep their defaults on the CLI.


def settings_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The settings dataclass filled from the parsed options."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid training settings: {exc}") from exc


# --- the command ---------------------------------------------------------------------------------


def build_train_parser(target: TrainTarget, settings_cls: type) -> argparse.ArgumentParser:
    """``mmreg train TARGET BIDS_DIR --out MODEL.pt [selection] [settings]``."""
    from mmreg.bids_app.parsing import Parser, no_exit, positive_int

    parser = Parser(
        prog=f"mmreg train {target.name}",
        description=f"Train the {target.description} on a BIDS dataset; writes MODEL.pt "
        "(config, weights, metadata) and MODEL.pt.sha256."
        + (f" Use it with --model {target.name}=MODEL.pt." if target.registers else ""),
    )
    parser.add_argument("bids_dir", type=Path, metavar="BIDS_DIR", help="training dataset")
    parser.add_argument("--out", type=Path, required=True, metavar="MODEL.pt")
    sel = parser.add_argument_group(
        "selecting training images"
        + (" (every anatomical image)" if target.inputs == "images" else "")
    )
    sel.add_argument("--participant-label", nargs="+", action="extend", default=[], metavar="L")
    if target.inputs in ("images", "either"):
        sel.add_argument(
            "--suffix",
            nargs="+",
            action="extend",
            default=None,
            metavar="SUFFIX",
            help="only these suffixes, e.g. T1w T2w FLAIR (default: all anatomical images)"
            if target.inputs == "images"
            else "train on single images of these suffixes (e.g. T1w) with their "
            "ground-truth label maps, not on --fixed/--moving pairs",
        )
    if target.inputs in ("pairs", "either"):
        sel.add_argument(
            "--fixed", nargs="+", action="extend", default=None, metavar="ENTITY=VALUE"
        )
        sel.add_argument(
            "--moving", nargs="+", action="append", default=None, metavar="ENTITY=VALUE"
        )
        sel.add_argument("--ground-truth", type=Path, default=None, metavar="DIR")
    run = parser.add_argument_group("execution")
    run.add_argument("--device", choices=DEVICES, default="auto")
    run.add_argument(
        "--omp-nthreads",
        type=positive_int,
        default=None,
        metavar="N",
        help="torch threads (default: usable CPUs)",
    )
    run.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the BIDS index is kept (default: next to MODEL.pt)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("-v", "--verbose", action="count", default=0)
    add_settings_options(parser, settings_cls)
    no_exit(parser)
    return parser


def _ground_truth_dir(given: Path | None, bids_dir: Path) -> Path | None:
    """``--ground-truth``, else the dataset's ``derivatives/ground-truth`` when present."""
    from mmreg.bids_app import query

    if given is None and (bids_dir / "derivatives" / "ground-truth").is_dir():
        return bids_dir / "derivatives" / "ground-truth"
    if given is not None and not Path(given).is_dir():
        raise query.InputDirMissingError(f"ground-truth folder not found: {given}")
    return given


def training_pairs(target: TrainTarget, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The training pairs, chosen with the participant level's query."""
    from mmreg.bids_app import query
    from mmreg.bids_app.config import Config

    bids_dir = query.check_bids_dir(args.bids_dir).resolve()
    ground_truth = _ground_truth_dir(args.ground_truth, bids_dir)
    fixed = query.parse_filter(args.fixed or list(target.fixed), option="--fixed")
    moving = tuple(
        query.parse_filter(m, option="--moving") for m in (args.moving or target.moving)
    )
    out = args.out.resolve()
    work = (args.work_dir or out.parent / f".{out.stem}-work").resolve()
    config = Config(
        bids_dir=str(bids_dir),
        output_dir=str(out.parent),
        participant_labels=query.normalize_participant_labels(args.participant_label),
        ground_truth=str(Path(ground_truth).resolve()) if ground_truth else None,
        fixed=fixed,
        moving=moving,
        work_dir=str(work),
    )
    pairs, missing = query.find_pairs(config)
    for item in missing:
        LOG.warning("sub-%s skipped: %s", item.subject, item.reason)
    if not pairs:
        raise query.NoMatchError("no training pair found")
    records = []
    for pair in pairs:
        record = pair.to_dict()
        record["bids_dir"] = str(bids_dir)
        records.append(record)
    return records


def training_images(target: TrainTarget, args: argparse.Namespace) -> list[Path]:
    """Every anatomical NIfTI image (``--suffix``, ``--participant-label``), sorted."""
    from mmreg.bids_app import query

    bids_dir = query.check_bids_dir(args.bids_dir).resolve()
    layout = query.load_layout(bids_dir)
    filters: dict[str, Any] = {"datatype": "anat", "extension": [".nii", ".nii.gz"]}
    labels = query.normalize_participant_labels(args.participant_label)
    if labels:
        filters["subject"] = list(labels)
    if args.suffix:
        filters["suffix"] = list(args.suffix)
    files = layout.get(return_type="object", **filters)
    images = sorted(
        Path(f.path)
        for f in files
        if args.suffix or str(f.get_entities().get("suffix", "")).lower() not in _NOT_IMAGES
    )
    if not images:
        raise query.NoMatchError(f"no training image found in {bids_dir}")
    return images


def labelled_training_images(target: TrainTarget, args: argparse.Namespace) -> list[Any]:
    """``--suffix`` images with their ground-truth label maps and landmarks."""
    from mmreg.bids_app import query

    bids_dir = query.check_bids_dir(args.bids_dir).resolve()
    ground_truth = _ground_truth_dir(args.ground_truth, bids_dir)
    images = training_images(target, args)
    return query.labelled_images(bids_dir, images, ground_truth)


def main_train(argv: Sequence[str]) -> int:
    """Entry point of ``mmreg train``."""
    if not argv or argv[0] in ("-h", "--help"):
        width = max(len(name) for name in TARGETS) + 2
        lines = [f"  {t.name:<{width}} {t.description}" for t in TARGETS.values()]
        print(
            "usage: mmreg train TARGET BIDS_DIR --out MODEL.pt [options]\n\n"
            "Fit a learned method on a BIDS dataset. Targets:\n" + "\n".join(lines) + "\n\n"
            "'mmreg train TARGET --help' lists a target's options."
        )
        return 0 if argv else 64
    name, rest = argv[0], list(argv[1:])
    if name not in TARGETS:
        raise UsageError(f"train: unknown target {name!r}; available: {', '.join(TARGETS)}")
    target = TARGETS[name]
    settings_cls, train = target.load()
    args = build_train_parser(target, settings_cls).parse_args(rest)
    from mmreg.bids_app.logs import setup_logging
    from mmreg.runtime import limit_threads, resolve_device, usable_cpus

    setup_logging(None, verbose=args.verbose)
    out = args.out.resolve()
    if out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give the model file, e.g. model.pt")
    settings = settings_from_args(settings_cls, args)
    limit_threads(args.omp_nthreads or usable_cpus())
    if target.inputs == "images":
        items: list[Any] = list(training_images(target, args))
        what = "image(s)"
    elif target.inputs == "either" and args.suffix:
        items = labelled_training_images(target, args)
        what = f"image(s), {sum(i.dseg is not None for i in items)} with labels"
    else:
        items = training_pairs(target, args)
        what = "pair(s)"
    device = resolve_device(args.device)
    LOG.info("training %s on %d %s, device %s", name, len(items), what, device)
    start = time.perf_counter()
    path = train(items, out=out, settings=settings, device=device, progress=not args.no_progress)
    LOG.info("wrote %s in %.0f s", path, time.perf_counter() - start)
    return 0
