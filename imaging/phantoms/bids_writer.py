"""What the synthetic BIDS datasets of the phantoms share: seeds, labels, metadata files, the loop.

Both phantom datasets (:mod:`~mmreg.imaging.phantoms.brain_dataset` and
:mod:`~mmreg.imaging.phantoms.wholebody_dataset`) are a BIDS raw dataset with
its ground truth under ``derivatives/ground-truth``; subject ``k`` of a dataset
made with ``seed`` is generated from :func:`subject_seed` ``(seed, k)``. Every
file is written atomically (:func:`mmreg.atomic.atomic_path`), so an
interrupted run leaves no half-written file.

Example:
    >>> subject_label(3, 12), subject_label(3, 120)
    ('03', '003')
    >>> subject_seed(7, 1) == subject_seed(7, 1) != subject_seed(7, 2)
    True
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mmreg import __version__
from mmreg.atomic import atomic_path

BIDS_VERSION = "1.10.0"
#: Where the ground truth goes, relative to the dataset root.
GROUND_TRUTH_DIR = Path("derivatives") / "ground-truth"

_Subject = TypeVar("_Subject")


def subject_seed(seed: int, index: int) -> int:
    """The generator seed of the ``index``-th subject (1-based) of a dataset made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def subject_label(index: int, n_subjects: int) -> str:
    """``01``, ``02``, ... (more digits only beyond 99 subjects)."""
    return f"{index:0{max(2, len(str(n_subjects)))}d}"


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON sidecar (indented, with a final newline)."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_tsv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """Write a tab-separated table with a header row."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_dataset_description(
    folder: Path, *, name: str, generator: str, license: str, **extra: Any
) -> None:
    """``dataset_description.json`` of a phantom dataset; a folder under ``derivatives/``
    is a derivative dataset that links back to the raw one two levels up."""
    derivative = folder.parent.name == "derivatives"
    description: dict[str, Any] = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative" if derivative else "raw",
        "License": license,
        "Authors": ["mmreg developers"],
        "GeneratedBy": [{"Name": "mmreg", "Version": __version__, "Description": generator}],
    }
    if derivative:
        description["DatasetLinks"] = {"raw": "../../"}
        description["SourceDatasets"] = [{"URL": "bids:raw:"}]
    write_json(folder / "dataset_description.json", {**description, **extra})


def write_participants(bids_dir: Path, rows: list[list[Any]]) -> None:
    """``participants.tsv`` (label, generator seed) and its sidecar."""
    write_tsv(bids_dir / "participants.tsv", ["participant_id", "seed"], rows)
    write_json(
        bids_dir / "participants.json",
        {
            "participant_id": {"Description": "Subject label"},
            "seed": {"Description": "Seed of the phantom generator for this subject"},
        },
    )


def write_phantom_dataset(
    bids_dir: Path,
    *,
    n_subjects: int,
    seed: int,
    max_rotation_deg: float,
    large_rotations: bool,
    generate: Callable[[int], _Subject],
    write_subject: Callable[[Path, Path, str, _Subject], None],
    write_raw_metadata: Callable[[Path, list[list[Any]], dict[str, Any]], None],
    write_ground_truth_metadata: Callable[[Path], None],
    timings: dict[str, list[float]] | None = None,
) -> Path:
    """Generate and write every subject of a phantom dataset, then its metadata files.

    Args:
        bids_dir: Dataset root (created if missing; existing files are overwritten).
        n_subjects: Number of subjects (labelled by :func:`subject_label`).
        seed: Dataset seed; subject ``k`` uses :func:`subject_seed` ``(seed, k)``.
        max_rotation_deg: Recorded in the dataset's summary (``generate`` applies it).
        large_rotations: Likewise.
        generate: Subject seed -> phantom subject.
        write_subject: ``(bids_dir, ground_truth_dir, label, subject)``: its files.
        write_raw_metadata: ``(bids_dir, participants rows, summary)``: the raw
            dataset's own files, once every subject is written.
        write_ground_truth_metadata: ``(ground_truth_dir)``: those of the ground truth.
        timings: If given, receives ``generate_s`` and ``write_s`` per subject.

    Returns:
        ``bids_dir``.

    Raises:
        ValueError: If ``n_subjects`` is less than 1.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    bids_dir = Path(bids_dir)
    gt_dir = bids_dir / GROUND_TRUTH_DIR
    summary = {
        "seed": int(seed),
        "n_subjects": int(n_subjects),
        "max_rotation_deg": float(max_rotation_deg),
        "large_rotations": bool(large_rotations),
    }
    rows = []
    for k in range(1, n_subjects + 1):
        label = subject_label(k, n_subjects)
        sub_seed = subject_seed(seed, k)
        t0 = time.perf_counter()
        subject = generate(sub_seed)
        t1 = time.perf_counter()
        write_subject(bids_dir, gt_dir, label, subject)
        if timings is not None:
            timings.setdefault("generate_s", []).append(t1 - t0)
            timings.setdefault("write_s", []).append(time.perf_counter() - t1)
        rows.append([f"sub-{label}", sub_seed])
    write_raw_metadata(bids_dir, rows, summary)
    write_ground_truth_metadata(gt_dir)
    return bids_dir
