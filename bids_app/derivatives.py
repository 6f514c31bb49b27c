"""The one writer of participant-level derivatives.

Workflow tasks write into their own work folders; at the end of each subject the
derivatives sink (:class:`mmreg.tasks.sink.SubjectDerivatives`, fMRIPrep's
``DerivativesDataSink`` pattern) calls :func:`write_subject_outputs`, which copies each
result into the BIDS derivatives layout of the contract (warped image, transform, JSON
sidecars, keypoints, per-subject CSV). File names come from :mod:`naming` alone. Every
file is written under a temporary name and renamed into place, so a reader (or a killed
run) never sees a partial file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import mmreg
from mmreg.atomic import atomic_copy, atomic_path, atomic_write_text
from mmreg.bids_app import naming
from mmreg.bids_app.columns import write_data_dictionary
from mmreg.bids_app.ownership import OUTPUT_NAME
from mmreg.errors import MmregError
from mmreg.methods.chain import step_extras
from mmreg.records import PairRecord, ResultRow, SubjectOutcome

LOGGER = logging.getLogger("mmreg.derivatives")

#: The contract's columns that say which row this is and how it went (text).
ROW_COLUMNS = ("subject", "session", "fixed", "moving", "method", "status", "error")
#: The files a row points at (text): derivatives relative to OUTPUT_DIR, inputs as URIs.
PATH_COLUMNS = ("warped", "transform", "fixed_image", "moving_image")
#: Contract columns, in order; per-label and extra columns follow.
CONTRACT_COLUMNS = (
    *ROW_COLUMNS,
    "runtime_s",
    "initial_dice_mean",
    "dice_mean",
    "hd95_mean_mm",
    "initial_tre_mean_mm",
    "tre_mean_mm",
    "neg_jacobian_pct",
)

#: Things BIDS cannot express inside a derivatives dataset: run logs, the work dir,
#: group tables, ITK transforms (BEP014 is not in the schema yet) and our CSVs.
#: (The validator matches folder names without a trailing slash.)
BIDSIGNORE = (
    "logs",
    "work",
    "group",
    "*_xfm.*",
    "*_evaluation.csv",
    "*_evaluation.json",
    "*_keypoints.tsv",
    "sub-*.html",
)

README = """# mmreg derivatives

Cross-modality registration results written by mmreg {version}.

- `sub-<label>/anat/*_space-<fixed>_desc-<method>_<moving>.nii.gz`: the moving image
  resampled onto the fixed image's grid by each method.
- `sub-<label>/anat/*_from-<moving>_to-<fixed>_desc-<method>_mode-image_xfm.{{txt,h5}}`:
  ITK transforms (fixed-space points to moving-space points).
- `sub-<label>/anat/*_from-<moving>_to-<fixed>_space-<image>_desc-<method>_keypoints.tsv`:
  for keypoint methods (KeyMorph), the keypoints found on each image, in that image's
  world coordinates (RAS mm, columns `name, x, y, z`; row k of both files correspond).
- `sub-<label>/anat/*_desc-midcoronal_<suffix>.nii.gz`: for 2D/3D pairs
  (`--coronal-slice`), the 3D image's mid-coronal slice along the spine that the 2D
  image was registered to, one file per Dixon channel; the sidecar holds the surface.
- `sub-<label>/sub-<label>_evaluation.csv`: accuracy and runtime per pair and method.
- `sub-<label>.html`: the subject's report (tables, plots, every alignment figure).
- `group/`: all rows, a per-method summary and `report.html`; with landmarks,
  `table1.csv` (keypoint transfer error per method and landmark group, in cm); for
  whole-body DXA/MR runs, `matching.csv` and `matching_summary.csv` (cross-modal
  subject matching and suspected subject swaps).
- `logs/<run-id>/`: the configuration and log of every run.
"""


def write_dataset_description(output_dir: Path, *, source: Path | None = None) -> Path:
    """``dataset_description.json`` of the derivatives dataset (and ``.bidsignore``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    description: dict[str, Any] = {
        "Name": OUTPUT_NAME,
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "mmreg",
                "Version": mmreg.__version__,
                "Description": "Cross-modality registration with learned and classical methods",
                "CodeURL": "https://github.com/mmreg/mmreg",
            }
        ],
    }
    if source is not None:
        # naming.bids_uri writes "bids:raw:<path>" links; this resolves them.
        uri = source.resolve().as_uri()
        description["SourceDatasets"] = [{"URL": uri}]
        description["DatasetLinks"] = {"raw": uri}
    path = atomic_write_text(
        output_dir / "dataset_description.json", json.dumps(description, indent=2) + "\n"
    )
    atomic_write_text(output_dir / "README.md", README.format(version=mmreg.__version__))
    ignore = output_dir / ".bidsignore"
    existing = ignore.read_text().splitlines() if ignore.exists() else []
    lines = existing + [p for p in BIDSIGNORE if p not in existing]
    atomic_write_text(ignore, "\n".join(lines) + "\n")
    return path


def write_pair_outputs(output_dir: Path, pair: PairRecord, row: ResultRow) -> dict[str, Any]:
    """Copy one (pair, method) result into the derivatives dataset.

    Returns:
        The row's CSV record (:func:`public_row`), with ``warped`` and ``transform`` set to
        the derivative paths (relative to ``output_dir``); a failed row writes nothing.
    """
    if not row.ok or not row.warped:
        return public_row(pair, row)
    fixed, moving = pair.fixed_label, pair.moving_label
    folder = output_dir / naming.subject_dir(pair.subject, pair.session)
    warped = folder / naming.warped_name(pair.subject, pair.session, fixed, moving, row.method)
    ext = Path(row.transform).suffix.lstrip(".")
    xfm = folder / naming.xfm_name(pair.subject, pair.session, fixed, moving, row.method, ext)
    atomic_copy(row.warped, warped)
    atomic_copy(row.transform, xfm)
    moving_uri = naming.bids_uri(pair.moving, pair.bids_dir or None)
    fixed_uri = naming.bids_uri(pair.fixed, pair.bids_dir or None)
    source = [moving_uri, fixed_uri]
    common = {"Method": row.method, "GeneratedBy": f"mmreg {mmreg.__version__}"}
    warped_meta = {
        "SpatialReference": fixed_uri,
        # bids::<path>: a file of this derivatives dataset (BIDS URI).
        "Sources": [*source, f"bids::{xfm.relative_to(output_dir).as_posix()}"],
        "Description": f"{moving} image resampled onto the {fixed} image's grid",
        # Resampling keeps every voxel; the background is never zeroed here.
        "SkullStripped": False,
        **common,
    }
    xfm_meta = {
        "Sources": source,
        "Description": (
            f"Maps {fixed}-space points to {moving}-space points (ITK convention, LPS); "
            f"apply it to resample the {moving} image onto the {fixed} grid"
        ),
        "FromFile": moving_uri,
        "ToFile": fixed_uri,
        "Linear": ext in ("txt", "mat"),
        **common,
    }
    atomic_write_text(_sidecar(warped), json.dumps(warped_meta, indent=2) + "\n")
    atomic_write_text(_sidecar(xfm), json.dumps(xfm_meta, indent=2) + "\n")
    keypoints = find_keypoints(row.extras)
    if keypoints is not None:
        for space, points, uri in (
            (fixed, keypoints[0], fixed_uri),
            (moving, keypoints[1], moving_uri),
        ):
            name = naming.keypoints_name(
                pair.subject, pair.session, fixed, moving, row.method, space
            )
            write_keypoints_tsv(folder / name, points)
            meta = {
                "Description": f"Keypoints detected on the {space} image by {row.method}, "
                "in its world coordinates (RAS, mm); row k here matches row k of the other "
                "image's file",
                "SpatialReference": uri,
                **common,
            }
            atomic_write_text(_sidecar(folder / name), json.dumps(meta, indent=2) + "\n")
    if row.midcoronal:
        write_midcoronal(folder, pair, row.midcoronal, common)
    groups = row.extras.get("label_groups") or []
    for side, path in row.label_maps.items():
        _write_predicted_dseg(folder, pair, side, Path(path), common, groups)
    return {
        **public_row(pair, row),
        "warped": warped.relative_to(output_dir).as_posix(),
        "transform": xfm.relative_to(output_dir).as_posix(),
    }


def write_subject_outputs(
    output_dir: Path,
    subject: str,
    pairs: Sequence[PairRecord],
    rows: Sequence[ResultRow],
    missing_rows: Sequence[Mapping[str, Any]] = (),
) -> SubjectOutcome:
    """Everything the participant level writes for one subject, in one place (the sink).

    Each ok row's files go into the derivatives dataset (:func:`write_pair_outputs`), then
    ``sub-<label>_evaluation.csv`` gets every row (the pairs that could not run, given as
    ``missing_rows``, last), then ``sub-<label>.html`` (from the paths the table stores). A
    row whose files cannot be written, or whose work files no longer match their seal,
    fails with the reason; nothing here raises for one row, and a report that cannot be
    made is a warning.

    Returns:
        The CSV rows, the failures' tracebacks and the damaged work folders.
    """
    from mmreg.cache import check_seal

    by_id = {p.pair_id: p for p in pairs}
    out: list[dict[str, Any]] = []
    tracebacks, damaged = [], []
    for row in rows:
        pair = by_id[row.pair_id]
        for path in (row.warped, row.transform) if row.ok else ():
            why = "missing" if not Path(path).is_file() else check_seal(Path(path).parent)
            if path and why:
                damaged.append(str(Path(path).parent))
                row = row.failed(f"a work file of this result is damaged ({why}); run again")
        if row.traceback:
            tracebacks.append((row.pair_id, row.method, row.traceback))
        try:
            out.append(write_pair_outputs(output_dir, pair, row))
        except (OSError, MmregError) as exc:
            out.append(public_row(pair, row.failed(f"could not write derivatives: {exc}")))
    out.extend(dict(r) for r in missing_rows)
    try:
        write_subject_csv(output_dir, subject, out)
    except OSError as exc:  # a full or read-only disk: this subject's table is lost
        reason = f"could not write sub-{subject}_evaluation.csv: {exc.strerror or exc}"
        out = [{**r, "status": "failed", "error": reason} for r in out]
    else:
        _write_subject_report(output_dir, subject, pairs)
    return SubjectOutcome(subject, tuple(out), tuple(tracebacks), tuple(dict.fromkeys(damaged)))


def _write_subject_report(output_dir: Path, subject: str, pairs: Sequence[PairRecord]) -> None:
    from mmreg.reports.group import write_subject_report

    bids_dirs = sorted({p.bids_dir for p in pairs if p.bids_dir})
    try:
        write_subject_report(
            output_dir, subject, bids_dir=Path(bids_dirs[0]) if bids_dirs else None
        )
    except (OSError, MmregError) as exc:  # a report is never worth a subject's results
        LOGGER.warning("sub-%s: no subject report (%s)", subject, exc)


def write_midcoronal(
    folder: Path, pair: PairRecord, record: Mapping[str, Any], common: Mapping[str, Any]
) -> list[Path]:
    """The mid-coronal slice a 2D image was registered to, one file per channel of the 3D
    image (``naming.midcoronal_name``), with a sidecar holding the sampled spine path.

    The same slice serves every method of the pair; each method's row writes it again
    (atomically, the same bytes), so a rerun after the raw images changed never leaves a
    stale slice behind.
    """
    side = record["side"]
    path_info = json.loads(Path(record["path"]).read_text()) if record.get("path") else {}
    written = []
    for channel in record.get("channels", []):
        target = folder / naming.midcoronal_name(Path(channel["source"]).name)
        sidecar = _sidecar(target)
        atomic_copy(channel["file"], target)
        meta = {
            "Description": "Mid-coronal slice of the 3D image along its spine, the 2D image "
            f"the {pair.label(_other(side))} image was registered to (before any "
            "intensity preprocessing)",
            "Sources": [
                naming.bids_uri(c["source"], pair.bids_dir or None) for c in record["channels"]
            ],
            "SpatialReference": "2D: x is the volume's x (left-right), y its z "
            "(superior-inferior), world mm",
            "FoundSpine": bool(path_info.get("found_spine", False)),
            "SurfaceZmm": path_info.get("z_mm", []),
            "SurfaceYmm": path_info.get("y_mm", []),
            "SliceSettings": path_info.get("settings", {}),
            "GeneratedBy": common["GeneratedBy"],
        }
        atomic_write_text(sidecar, json.dumps(meta, indent=2) + "\n")
        written.append(target)
    return written


def _other(side: str) -> str:
    return "moving" if side == "fixed" else "fixed"


def _write_predicted_dseg(
    folder: Path,
    pair: PairRecord,
    side: str,
    path: Path,
    common: Mapping[str, Any],
    groups: Sequence[Sequence[int]],
) -> None:
    """A method's predicted segmentation of one image, resampled onto that image's grid,
    with its ``dseg.tsv`` (each value: the ground-truth labels its class stands for)."""
    from mmreg.imaging.image import load_labels, read_grid, save_image
    from mmreg.imaging.transform import Transform

    labels = load_labels(path)
    grid = read_grid(pair.image(side))
    if grid.ndim != labels.ndim:  # e.g. a whole-body slice of a 3D image: not written
        return
    on_grid = Transform.identity(grid.ndim).apply(labels, grid, interpolation="nearest")
    space = pair.label(side)
    name = naming.dseg_name(pair.subject, pair.session, pair.fixed_label, pair.moving_label, space)
    with atomic_path(folder / name) as tmp:
        save_image(on_grid.with_data(on_grid.data.astype("int16")), tmp)
    meta = {
        "Description": f"Segmentation of the {space} image predicted by {common['Method']} "
        "(label values as in the training ground truth)",
        "SpatialReference": naming.bids_uri(pair.image(side), pair.bids_dir or None),
        **common,
    }
    atomic_write_text(_sidecar(folder / name), json.dumps(meta, indent=2) + "\n")
    rows = [
        f"{group[0]}\tlabel-{'+'.join(str(v) for v in group)}\n" for group in groups[1:] if group
    ]
    tsv = folder / (name[: -len(".nii.gz")] + ".tsv")
    atomic_write_text(tsv, "index\tname\n" + "".join(rows))


def find_keypoints(extras: Mapping[str, Any]) -> tuple[list, list] | None:
    """``(fixed, moving)`` keypoints of a result, or of the first chain step that has them."""
    for candidate in step_extras(extras):
        if candidate.get("keypoints_fixed") and candidate.get("keypoints_moving"):
            return candidate["keypoints_fixed"], candidate["keypoints_moving"]
    return None


def write_keypoints_tsv(path: Path, points: Sequence[Sequence[float]]) -> Path:
    """Write keypoints as ``name, x, y, z`` (the landmarks format), names ``kp000``..."""
    lines = ["name\tx\ty\tz"]
    for k, point in enumerate(points):
        x, y, z = [*point, 0.0, 0.0, 0.0][:3]
        lines.append(f"kp{k:03d}\t{x:.4f}\t{y:.4f}\t{z:.4f}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _sidecar(path: Path) -> Path:
    name = path.name
    for ext in (".nii.gz", ".nii", ".txt", ".h5", ".mat"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


def order_columns(columns: Iterable[str]) -> list[str]:
    """Contract columns first, then per-label Dice, then everything else (sorted)."""
    columns = list(dict.fromkeys(columns))
    head = list(CONTRACT_COLUMNS)
    dice = sorted(c for c in columns if c.startswith("dice_") and c not in head)
    rest = sorted(c for c in columns if c not in head and c not in dice)
    return head + dice + rest


def public_row(pair: PairRecord, row: ResultRow) -> dict[str, Any]:
    """A CSV row: the pair's identity, the row's status and metrics."""
    return {
        "subject": pair.subject,
        "session": pair.session or "",
        "fixed": pair.fixed_label,
        "moving": pair.moving_label,
        # BIDS URIs (bids:raw:<path in BIDS_DIR>): the table stays valid when moved.
        "fixed_image": naming.bids_uri(pair.fixed, pair.bids_dir or None) if pair.fixed else "",
        "moving_image": naming.bids_uri(pair.moving, pair.bids_dir or None) if pair.moving else "",
        "method": row.method,
        "status": row.status,
        "error": row.error or "",
        "runtime_s": row.runtime_s,
        **row.metrics,
        "warnings": row.warnings,
    }


def missing_row(
    subject: str, session: str | None, fixed: str, moving: str, method: str, reason: str
) -> dict[str, Any]:
    """The CSV row of a pair that could not be run at all."""
    pair = PairRecord(subject, session, "", "", fixed, moving)
    return public_row(pair, ResultRow("", method, "failed", error=reason))


def write_subject_csv(output_dir: Path, subject: str, rows: Sequence[dict[str, Any]]) -> Path:
    """``sub-<l>/sub-<l>_evaluation.csv`` with all of the subject's rows."""
    frame = pd.DataFrame(list(rows))
    frame = frame.reindex(columns=order_columns(frame.columns))
    path = output_dir / naming.evaluation_csv(subject)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    write_data_dictionary(path, frame.columns)
    return path
