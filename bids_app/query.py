"""The BIDS query: from a dataset and entity filters to (fixed, moving) pair records.

Rules (the CLI help and ``docs/usage`` point here):

- Images are NIfTI only (``.nii``, ``.nii.gz``) inside ``sub-<label>/``;
  ``derivatives/``, ``sourcedata/``, ``code/`` and every other top-level
  folder not named ``sub-*`` are never searched.
- A filter is ``{BIDS key: value}``; keys are the short file-name keys
  (``acq``, ``ses``, ``ce``, ``run``, ...) or pybids' long names
  (``acquisition``, ``session``, ...), plus ``suffix`` and ``datatype``. Any
  suffix works, also ones BIDS does not define (``US``, ``DXA``): the dataset
  is indexed without validation for that reason.
- Pairing happens within one subject and session. When the fixed filter
  names a session (``--fixed ses=pre``), the fixed image is taken from that
  session for every session of the subject (longitudinal use).
- Every moving image matching a moving filter becomes one pair. When several
  fixed images qualify, the one sharing most entity values with the moving
  image (``acq``, ``run``, ``ce``, ...) is used; a tie fails that pair with a
  message saying how to narrow ``--fixed``.
- A subject/session lacking the fixed or a moving image gets a
  :class:`MissingPair`, which the participant level writes as a failed row.
  So does a subject whose folder cannot be indexed (a symlink loop, an unreadable
  folder), and a pair whose image is gone by the time pairs are made (a broken
  symlink, a file removed after indexing); every other subject still runs.
- A ``sub-*`` folder whose label is not a BIDS label (ASCII letters and digits,
  so not ``sub-Ünï``) is skipped with a warning.
- The pybids index is cached under ``WORK_DIR/bids_db``; a corrupt one is rebuilt.
- A filter that matches no image in the selected subjects at all (a typo,
  most likely) stops the run with exit code 18 (:class:`NoMatchError`).
- Requested participant labels that do not exist: a warning when some are
  found (as fMRIPrep does), a :class:`~mmreg.errors.UsageError` (exit 64)
  when none is.
- Requested session labels (``--session-label``) restrict the pairs to those
  sessions; subjects with none of them are left out (no failed rows), and a
  label with no image in the selected subjects stops the run (exit 18). A fixed
  filter naming a session still takes the fixed image from that session.
- ``--bids-filter-file`` (:func:`read_filter_file`) gives the same filters as
  JSON; ``--fixed``/``--moving`` override its keys (:func:`merge_filter`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmreg.bids_app import naming
from mmreg.bids_app.config import DEFAULT_FIXED, DEFAULT_MOVING, Config, describe_filter
from mmreg.errors import InputError, UsageError
from mmreg.records import LabelledImage, PairRecord

if TYPE_CHECKING:
    from bids import BIDSLayout

LOG = logging.getLogger("mmreg.bids_app.query")

NIFTI_EXTENSIONS = (".nii", ".nii.gz")

#: Short BIDS keys -> pybids entity names (pybids' long names are accepted as they are).
ENTITY_KEYS: dict[str, str] = {
    "ses": "session",
    "sample": "sample",
    "task": "task",
    "tracksys": "tracksys",
    "acq": "acquisition",
    "nuc": "nucleus",
    "voi": "volume",
    "ce": "ceagent",
    "stain": "staining",
    "trc": "tracer",
    "rec": "reconstruction",
    "dir": "direction",
    "run": "run",
    "proc": "proc",
    "mod": "modality",
    "echo": "echo",
    "flip": "flip",
    "inv": "inv",
    "mt": "mt",
    "part": "part",
    "recording": "recording",
    "space": "space",
    "chunk": "chunk",
    "suffix": "suffix",
    "datatype": "datatype",
}
_LONG_TO_SHORT = {v: k for k, v in ENTITY_KEYS.items()}
#: Entities that the query itself controls; filtering on them would break pairing.
_RESERVED = {
    "sub": "--participant-label",
    "subject": "--participant-label",
    "extension": "nothing (only NIfTI images are used)",
}
_INT_ENTITIES = {"run", "echo", "flip", "inv", "chunk"}
#: A BIDS label: ASCII letters and digits (str.isalnum() would also accept "Ünï").
_LABEL = re.compile(r"[A-Za-z0-9]+")
#: pybids' index file inside a database folder, and the tables a usable one has.
_INDEX_FILE = "layout_index.sqlite"
_INDEX_TABLES = frozenset({"layout_info", "files", "tags", "entities"})
#: Deeper folder nesting inside one subject is taken as a loop the inode check missed.
_MAX_DEPTH = 64


def is_bids_label(text: str) -> bool:
    """Whether ``text`` is a BIDS label: one or more ASCII letters and digits."""
    return _LABEL.fullmatch(text) is not None


def _why(exc: OSError) -> str:
    # "Permission denied", "Too many levels of symbolic links": the errno text, no path.
    return exc.strerror or type(exc).__name__


class InputDirMissingError(InputError):
    """An input folder (BIDS_DIR, --ground-truth) does not exist. Exit code 66."""


class NotBidsError(InputError):
    """BIDS_DIR is not a BIDS dataset. Exit code 16."""


class NoMatchError(InputError):
    """A filter selected no image at all. Exit code 18."""


#: One registration to run, as the query finds it (``bids_dir`` and ``inputs_sha256`` are
#: filled in by the run); the typed record every layer passes on.
Pair = PairRecord


@dataclass(frozen=True)
class MissingPair:
    """A pair that cannot be run; the participant level writes it as a failed row.

    Attributes:
        subject: Subject label without ``sub-``.
        session: Session label, or ``None``.
        fixed_label: Modality label the fixed image would have had.
        moving_label: Modality label the moving image would have had.
        reason: One-line reason for the ``error`` column.
    """

    subject: str
    session: str | None
    fixed_label: str
    moving_label: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict with every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MissingPair:
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ---------------------------------------------------------------------------------------------
# Filters


def parse_filter(tokens: Iterable[str], *, option: str = "--moving") -> dict[str, str]:
    """Parse ``["suffix=T2w", "acq=highres"]`` (or ``["suffix=T2w,acq=highres"]``).

    Keys are kept as typed (short or long); values must be BIDS labels.

    Raises:
        UsageError: On a token without ``=``, an unknown or reserved key, an
            invalid value, or one key given twice with different values.
    """
    out: dict[str, str] = {}
    for token in tokens:
        for item in filter(None, (t.strip() for t in token.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key or not value:
                raise UsageError(
                    f"{option}: expected ENTITY=VALUE, got {item!r} "
                    "(give positional arguments before options)"
                )
            if key in _RESERVED:
                raise UsageError(f"{option}: {key!r} cannot be filtered on; use {_RESERVED[key]}")
            if key not in ENTITY_KEYS and key not in _LONG_TO_SHORT:
                raise UsageError(
                    f"{option}: unknown entity {key!r}; known: {', '.join(ENTITY_KEYS)}"
                )
            value = naming.sanitize_label(value.strip(), what=f"{option} {key} value")
            if _LONG_TO_SHORT.get(key, key) in {_LONG_TO_SHORT.get(k, k) for k in out}:
                previous = next(
                    v
                    for k, v in out.items()
                    if _LONG_TO_SHORT.get(k, k) == _LONG_TO_SHORT.get(key, key)
                )
                if previous != value:
                    raise UsageError(f"{option}: {key} given twice ({previous}, {value})")
                continue
            out[key] = value
    return out


def _pybids_filter(entities: Mapping[str, str]) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for key, value in entities.items():
        name = ENTITY_KEYS.get(key, key)
        query[name] = int(value) if name in _INT_ENTITIES and value.isdigit() else value
    return query


def _with_default_suffix(
    entities: Mapping[str, str], default: Mapping[str, str]
) -> dict[str, str]:
    # A filter without a suffix keeps the default suffix: "--moving acq=highres" means T2w images
    # acquired "highres", not every image with that acquisition label.
    out = dict(entities)
    if "suffix" not in out:
        out = {**{k: v for k, v in default.items() if k == "suffix"}, **out}
    return out


def read_label_file(path: str | os.PathLike[str]) -> list[str]:
    """Labels listed in a text file: one per line (or separated by commas/whitespace).

    ``#`` starts a comment; a ``participants.tsv`` works too (its first column is read,
    the ``participant_id`` header skipped).

    Raises:
        UsageError: When the file cannot be read or lists no label.
    """
    path = Path(path)
    try:
        # participants.tsv is UTF-8 in BIDS, whatever the locale of a container.
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        # A UnicodeDecodeError has no strerror (it is a ValueError, not an OSError).
        reason = exc.strerror if isinstance(exc, OSError) else None
        raise UsageError(f"--participant-label: cannot read {path}: {reason or exc}") from exc
    labels: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "\t" in line:  # a TSV: the first column only
            line = line.split("\t", 1)[0].strip()
        if line == "participant_id":
            continue
        labels.extend(t for t in line.replace(",", " ").split() if t)
    if not labels:
        raise UsageError(f"--participant-label: {path} lists no participant")
    return labels


def _is_label_file(value: str) -> bool:
    # Labels are alphanumeric, so anything else that names a file is a list of labels;
    # '@file' forces the file reading for a file named like a label.
    if value.startswith("@"):
        return True
    bare = value.removeprefix("sub-")
    return not is_bids_label(bare) and Path(value).is_file()


def _entity_labels(items: Iterable[str], prefix: str, kind: str) -> tuple[str, ...]:
    """Comma-separated labels with an optional ``<prefix>-``, validated, duplicates dropped.

    Raises:
        UsageError: For a label that is not ASCII alphanumeric.
    """
    out: list[str] = []
    for item in items:
        for label in filter(None, (t.strip() for t in str(item).split(","))):
            label = label.removeprefix(f"{prefix}-")
            if not is_bids_label(label):
                raise UsageError(
                    f"invalid {kind} label {label!r}: BIDS labels are ASCII letters "
                    "and digits only (A-Z, a-z, 0-9)"
                )
            if label not in out:
                out.append(label)
    return tuple(out)


def normalize_participant_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Strip an optional ``sub-`` prefix, validate, drop duplicates (order kept).

    A value that is a file (or ``@FILE``) is replaced by the labels it lists
    (:func:`read_label_file`), so ten thousand subjects need no ten thousand arguments.

    Raises:
        UsageError: For a label that is not ASCII alphanumeric (``../x`` never reaches a
            path, ``Ünï`` never reaches pybids, which would not match it).
    """
    items: list[str] = []
    for raw in labels:
        raw = str(raw).strip()
        items += read_label_file(raw.removeprefix("@")) if _is_label_file(raw) else [raw]
    return _entity_labels(items, "sub", "participant")


def normalize_session_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Strip an optional ``ses-`` prefix, validate, drop duplicates (order kept).

    Raises:
        UsageError: For a label that is not ASCII alphanumeric.
    """
    return _entity_labels(labels, "ses", "session")


#: Top-level keys of a ``--bids-filter-file`` (fMRIPrep's format, one query per modality).
FILTER_FILE_KEYS = ("fixed", "moving")


def _same_key(key: str) -> str:
    return _LONG_TO_SHORT.get(key, key)


def read_filter_file(
    path: str | os.PathLike[str],
) -> tuple[dict[str, str] | None, list[dict[str, str]] | None]:
    """Read a ``--bids-filter-file``: ``{"fixed": {...}, "moving": {...} or [{...}, ...]}``.

    Keys of each query are BIDS entities as in :func:`parse_filter` (``acq`` or
    ``acquisition``, ``suffix``, ...); values are labels (strings, or whole numbers for
    ``run`` and the like). A modality not in the file is ``None`` (the default applies).

    Raises:
        UsageError: The file cannot be read, is not JSON, has a top-level key other than
            ``fixed``/``moving``, or a query that :func:`parse_filter` refuses; the message
            names the file.
    """
    path = Path(path)
    option = f"--bids-filter-file {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{option}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise UsageError(f"{option}: not valid JSON ({message})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{option}: expected a JSON object with keys fixed and/or moving")
    unknown = [k for k in data if k not in FILTER_FILE_KEYS]
    if unknown:
        raise UsageError(
            f"{option}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"use {' and/or '.join(FILTER_FILE_KEYS)}"
        )

    def one(query: Any, where: str) -> dict[str, str]:
        if not isinstance(query, dict):
            raise UsageError(f"{option}: {where} must be an object of ENTITY: VALUE")
        tokens = []
        for key, value in query.items():
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise UsageError(
                    f"{option}: {where}.{key} must be a label (a string), got {value!r}"
                )
            if isinstance(value, str) and "," in value:
                raise UsageError(f"{option}: {where}.{key}: one value only, got {value!r}")
            tokens.append(f"{key}={value}")
        return parse_filter(tokens, option=f"{option} ({where})")

    fixed = one(data["fixed"], "fixed") if "fixed" in data else None
    moving: list[dict[str, str]] | None = None
    if "moving" in data:
        queries = data["moving"] if isinstance(data["moving"], list) else [data["moving"]]
        if not queries:
            raise UsageError(f"{option}: moving is an empty list")
        moving = [one(q, f"moving[{i}]") for i, q in enumerate(queries)]
    return fixed, moving


def merge_filter(base: Mapping[str, str], override: Mapping[str, str]) -> dict[str, str]:
    """``base`` with the keys of ``override`` replaced (``acq`` replaces ``acquisition``)."""
    replaced = {_same_key(k) for k in override}
    return {**{k: v for k, v in base.items() if _same_key(k) not in replaced}, **override}


def merge_moving_filters(
    base: Sequence[Mapping[str, str]], override: Sequence[Mapping[str, str]]
) -> list[dict[str, str]]:
    """Layer command-line ``--moving`` filters over a filter file's, key by key.

    One base filter: each override is merged over it. One override: it is merged over
    each base filter. Otherwise both lists must be equally long and are merged in order.

    Raises:
        UsageError: For two lists of different lengths, both longer than one.
    """
    if not base:
        return [dict(o) for o in override]
    if not override:
        return [dict(b) for b in base]
    if len(base) == 1:
        return [merge_filter(base[0], o) for o in override]
    if len(override) == 1:
        return [merge_filter(b, override[0]) for b in base]
    if len(base) != len(override):
        raise UsageError(
            f"--moving given {len(override)} times but the filter file has {len(base)} "
            "moving queries; give one --moving (applied to each) or as many as the file"
        )
    return [merge_filter(b, o) for b, o in zip(base, override, strict=True)]


# ---------------------------------------------------------------------------------------------
# Dataset checks and indexing


def check_bids_dir(bids_dir: str | os.PathLike[str]) -> Path:
    """Exit-code-carrying checks on BIDS_DIR: exists (66), is BIDS (16).

    Raises:
        InputDirMissingError: The folder does not exist.
        NotBidsError: No ``dataset_description.json``, or it is not readable JSON.
    """
    path = Path(bids_dir)
    if not path.exists():
        raise InputDirMissingError(f"input folder not found: {path}")
    if not path.is_dir():
        raise InputDirMissingError(f"input is not a folder: {path}")
    description = path / "dataset_description.json"
    if not description.is_file():
        raise NotBidsError(f"not a BIDS dataset: {path} has no dataset_description.json")
    try:
        json.loads(description.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NotBidsError(
            f"not a BIDS dataset: {description} is not valid JSON ({type(exc).__name__})"
        ) from None
    return path


@dataclass(frozen=True)
class DatasetScan:
    """What one walk of the ``sub-*`` folders found (see :func:`scan_dataset`).

    Attributes:
        subjects: Labels of the ``sub-<label>`` folders, sorted (broken ones included).
        problems: Subject label -> one-line reason why its folder cannot be indexed (a
            symlink loop, an unreadable folder); that subject fails, the others run.
        invalid: ``sub-*`` folders whose label is not a BIDS label (``sub-Ünï``); skipped.
        fingerprint: Changes whenever the index would (the cache key of the index).
    """

    subjects: tuple[str, ...]
    problems: Mapping[str, str]
    invalid: tuple[str, ...]
    fingerprint: str

    def excluded(self) -> list[str]:
        """Top-level folder names that pybids must not enter."""
        return sorted({*(f"sub-{s}" for s in self.problems), *self.invalid})


def _walk_subject(folder: Path, root: Path, root_id: tuple[int, int], digest: Any) -> str | None:
    """Digest one subject's folder tree; a one-line reason when it cannot be indexed.

    pybids follows directory symlinks without loop detection and stops the whole index on
    an unreadable folder, so both are found here first and the subject is left out of it.
    A folder's mtime changes whenever an entry is added, removed or renamed in it, which
    is exactly what invalidates a file index (metadata is not indexed).
    """
    # Folders on the path from the root, by (device, inode): a link to one of them loops.
    stack: list[tuple[Path, dict[tuple[int, int], str]]] = [
        (folder, {root_id: "the dataset root"})
    ]
    while stack:
        path, ancestors = stack.pop()
        rel = path.relative_to(root).as_posix()
        try:
            st = os.stat(path)
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed since its parent was listed: it is simply not there
        except OSError as exc:
            return f"cannot read folder {rel} ({_why(exc)})"
        ident = (st.st_dev, st.st_ino)
        if ident in ancestors:
            return f"symlink loop: {rel} leads back to {ancestors[ident]}"
        if len(ancestors) > _MAX_DEPTH:
            return f"folder {rel} is nested more than {_MAX_DEPTH} levels deep (a symlink loop?)"
        here = {**ancestors, ident: rel}
        digest.update(f"{rel}\0{st.st_mtime_ns}\n".encode())
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError as exc:
                if entry.name.endswith(NIFTI_EXTENSIONS):  # an image that cannot be opened
                    return f"cannot open {rel}/{entry.name} ({_why(exc)})"
                continue  # any other broken entry: pybids skips it as well
            if is_dir and entry.name.endswith(NIFTI_EXTENSIONS):
                # pybids would skip it, leaving a misleading "missing modality".
                return f"{rel}/{entry.name} is a directory, not a NIfTI file"
            if is_dir:
                stack.append((Path(entry.path), here))
    return None


def scan_dataset(bids_dir: str | os.PathLike[str]) -> DatasetScan:
    """Walk the ``sub-*`` folders once: subjects, broken subjects, the index fingerprint.

    Raises:
        InputDirMissingError: BIDS_DIR itself cannot be listed (66).
    """
    root = Path(bids_dir).resolve()
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(str(root).encode())
    try:
        root_stat = os.stat(root)
        with os.scandir(root) as it:
            top = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise InputDirMissingError(f"cannot read input folder {root} ({_why(exc)})") from None
    digest.update(f".\0{root_stat.st_mtime_ns}\n".encode())
    root_id = (root_stat.st_dev, root_stat.st_ino)
    subjects: list[str] = []
    problems: dict[str, str] = {}
    invalid: list[str] = []
    for entry in top:
        if not entry.name.startswith("sub-"):
            continue
        label = entry.name[4:]
        try:
            is_dir, reason = entry.is_dir(), None
        except OSError as exc:  # sub-02 -> sub-02
            is_dir, reason = True, f"cannot open folder {entry.name} ({_why(exc)})"
        if not is_dir:
            continue  # a stray file
        if not is_bids_label(label):
            invalid.append(entry.name)
            continue
        subjects.append(label)
        reason = reason or _walk_subject(Path(entry.path), root, root_id, digest)
        if reason:
            problems[label] = reason
    # The excluded subjects change the index even when no mtime does (chmod, a fixed link).
    for name, reason in sorted(problems.items()):
        digest.update(f"problem\0{name}\0{reason}\n".encode())
    for name in invalid:
        digest.update(f"invalid\0{name}\n".encode())
    return DatasetScan(tuple(subjects), problems, tuple(invalid), digest.hexdigest()[:16])


def _ignore_patterns(excluded: Sequence[str] = ()) -> list[Any]:
    # Only sub-* folders hold raw images; skipping the rest keeps big derivatives out of the index
    # (and keeps mmreg's own outputs, whose suffixes are T2w etc., from being taken as inputs).
    patterns = [re.compile(r"^/(?!sub-)[^/]+/"), re.compile(r"/\.")]
    if excluded:
        # Broken subjects (loops, unreadable folders) would stop or never end the indexing.
        names = "|".join(re.escape(n) for n in excluded)
        patterns.append(re.compile(rf"^/(?:{names})(?:/|$)"))
    return patterns


def _index_problem(folder: Path) -> str | None:
    """Why the pybids index in ``folder`` cannot be used, or ``None`` when it looks sound.

    A truncated or overwritten sqlite file often opens fine and fails only on a later
    query, so the whole file is checked (``PRAGMA quick_check``) before pybids sees it.
    """
    db = folder / _INDEX_FILE
    if not db.is_file():
        return f"no {_INDEX_FILE}"
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            check = con.execute("PRAGMA quick_check").fetchone()
            rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {row[0] for row in rows}
        finally:
            con.close()
    except sqlite3.Error as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    if not check or check[0] != "ok":
        return f"integrity check failed ({check[0] if check else 'no answer'})"
    lacking = _INDEX_TABLES - tables
    if lacking:
        return f"tables missing ({', '.join(sorted(lacking))})"
    return None


def _open_index(root: Path, folder: Path) -> tuple[BIDSLayout | None, str]:
    """The layout stored in ``folder``, or ``None`` and the reason it is unusable."""
    from bids import BIDSLayout

    problem = _index_problem(folder)
    if problem is not None:
        return None, problem
    try:
        layout = BIDSLayout(root, validate=False, derivatives=False, database_path=folder)
        # A cheap query through the files and tags tables (an empty answer is fine).
        layout.get(return_type="filename", suffix="mmregNoSuchSuffix")
    except Exception as exc:  # pybids and SQLAlchemy raise many types for a bad index
        LOG.debug("BIDS index %s does not open", folder, exc_info=True)
        return None, f"pybids cannot open it ({type(exc).__name__})"
    return layout, ""


def _discard(folder: Path) -> None:
    # Renamed first, so that a concurrent run never opens a half-deleted index.
    trash = folder.parent / f".stale-{uuid.uuid4().hex}"
    try:
        folder.rename(trash)
    except OSError:
        trash = folder
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            trash.unlink()


def load_layout(
    bids_dir: str | os.PathLike[str],
    database_root: str | os.PathLike[str] | None = None,
    *,
    scan: DatasetScan | None = None,
) -> BIDSLayout:
    """Index ``bids_dir`` with pybids (no validation, no metadata).

    Subjects that :func:`scan_dataset` found broken (or ``scan.problems``, when given)
    and ``sub-*`` folders without a BIDS label are left out of the index.

    With ``database_root``, the index is kept in
    ``<database_root>/<dataset fingerprint>/`` and reused by later runs on an
    unchanged dataset. It is built in a private folder and renamed into place,
    so concurrent runs sharing a work dir (SLURM arrays) never see a partial one.
    A stored index that is corrupt (a truncated or overwritten sqlite file) is
    rebuilt, with one warning.
    """
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    root = Path(bids_dir).resolve()
    scan = scan or scan_dataset(root)

    def build(database_path: Path | None) -> BIDSLayout:
        indexer = BIDSLayoutIndexer(
            validate=False, ignore=_ignore_patterns(scan.excluded()), index_metadata=False
        )
        return BIDSLayout(
            root, validate=False, derivatives=False, indexer=indexer, database_path=database_path
        )

    if database_root is None:
        return build(None)
    final = Path(database_root) / scan.fingerprint
    if final.exists():
        layout, problem = _open_index(root, final)
        if layout is not None:
            LOG.debug("reusing BIDS index %s", final)
            return layout
        LOG.warning("BIDS index %s is unusable (%s); rebuilding it", final, problem)
        _discard(final)
    try:
        tmp = final.parent / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
    except OSError:
        LOG.debug("cannot write a BIDS index under %s; indexing in memory", database_root)
        return build(None)
    try:
        layout = build(tmp)
        del layout  # close the sqlite connection before the folder moves
        # An OSError here means another run finished the same index first; theirs is equal.
        with contextlib.suppress(OSError):
            tmp.rename(final)
        layout, problem = _open_index(root, final)
        if layout is None:  # e.g. another run's index was broken in between: never fatal
            LOG.warning("BIDS index %s is unusable (%s); indexing in memory", final, problem)
            return build(None)
        return layout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Pairing


@dataclass(frozen=True)
class _Image:
    path: str
    subject: str
    session: str | None
    suffix: str
    entities: tuple[tuple[str, str], ...]  # short key -> value, label entities only

    def get(self, key: str) -> str | None:
        return dict(self.entities).get(key)


def _as_image(path: Path, entities: Mapping[str, Any], root: Path) -> _Image | None:
    subject = entities.get("subject")
    if not subject or not any(path.name.endswith(e) for e in NIFTI_EXTENSIONS):
        return None
    # Indexing without validation also sees stray files; only sub-<l>/ holds subject data.
    if path.relative_to(root).parts[0] != f"sub-{subject}":
        return None
    label_entities = tuple(
        (_LONG_TO_SHORT[name], str(value))
        for name, value in entities.items()
        if _LONG_TO_SHORT.get(name) in naming.LABEL_ENTITIES
    )
    return _Image(
        str(path),
        str(subject),
        entities.get("session"),
        str(entities["suffix"]),
        tuple(sorted(label_entities)),
    )


def _select(
    layout: BIDSLayout,
    root: Path,
    entities: Mapping[str, str],
    subjects: Sequence[str],
    everyone: Sequence[str],
) -> list[_Image]:
    query = _pybids_filter(entities)
    if set(subjects) != set(everyone):
        query["subject"] = list(subjects)
    # File names only, parsed with pybids' own patterns: asking the database for each file's
    # entities costs one query per file, which dominates on large datasets.
    files = layout.get(return_type="filename", extension=list(NIFTI_EXTENSIONS), **query)
    images = []
    for name in files:
        path = Path(name)
        # Relative to the root: a root path like /data/sub-99/bids must not set the subject.
        rel = "/" + path.relative_to(root).as_posix()
        img = _as_image(path, layout.parse_file_entities(rel), root)
        if img is not None:
            images.append(img)
    return sorted(images, key=lambda i: i.path)


def _affinity(fixed: _Image, moving: _Image) -> int:
    keys = {k for k, _ in fixed.entities} | {k for k, _ in moving.entities}
    return sum(fixed.get(k) == moving.get(k) for k in keys)


def _choose_fixed(
    candidates: Sequence[_Image], moving: _Image, option: str
) -> tuple[_Image | None, str]:
    candidates = [c for c in candidates if c.path != moving.path]
    if not candidates:
        return None, f"missing modality: no file matches {option} (other than the moving image)"
    if len(candidates) == 1:
        return candidates[0], ""
    scores = [_affinity(c, moving) for c in candidates]
    best = max(scores)
    winners = [c for c, s in zip(candidates, scores, strict=True) if s == best]
    if len(winners) == 1:
        return winners[0], ""
    names = ", ".join(Path(c.path).name for c in winners)
    return None, (
        f"ambiguous fixed image: {len(winners)} files match {option} ({names}); "
        "narrow the filter, e.g. with acq=, run= or ses="
    )


def _labels(
    pairs: Sequence[tuple[str | None, _Image, _Image]],
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Choose the entities each suffix needs in its label so that output names stay unique."""
    needed: dict[str, list[str]] = defaultdict(list)

    def label(img: _Image) -> str:
        keys = needed[img.suffix]
        acq = img.get("acq") if "acq" in keys else None
        others = {k: img.get(k) for k in keys if k != "acq"}
        return naming.modality_label(img.suffix, acq, **others)

    # Every image used in one subject/session must get its own label (so each output name says
    # which input it came from); the entities needed are decided once for the whole run, so one
    # acquisition is labelled alike in every subject.
    groups: dict[tuple[str, str | None], dict[str, _Image]] = defaultdict(dict)
    for session, fixed, moving in pairs:
        groups[(moving.subject, session)].update({fixed.path: fixed, moving.path: moving})
    for _ in range(len(naming.LABEL_ENTITIES) * max(1, len(pairs))):
        conflicts: list[tuple[_Image, _Image]] = []
        for images in groups.values():
            by_label: dict[str, _Image] = {}
            for img in images.values():
                other = by_label.setdefault(label(img), img)
                if other is not img:
                    conflicts.append((img, other))
        added = False
        for a, b in conflicts:
            keys = needed[a.suffix]
            for key in naming.LABEL_ENTITIES:
                if key not in keys and a.get(key) != b.get(key):
                    keys.append(key)
                    keys.sort(key=naming.LABEL_ENTITIES.index)
                    added = True
                    break
            if added:
                break  # recompute: one new entity may settle several conflicts
        if not added:
            break
    paths = {img.path: label(img) for _, f, m in pairs for img in (f, m)}
    return dict(needed), paths


def _filter_label(entities: Mapping[str, str], needed: Mapping[str, list[str]]) -> str:
    suffix = entities.get("suffix", "image")
    short = {_LONG_TO_SHORT.get(k, k): v for k, v in entities.items()}
    keys = needed.get(suffix, [])
    acq = short.get("acq") if "acq" in keys else None
    others = {k: short[k] for k in keys if k != "acq" and k in short}
    return naming.modality_label(suffix, acq, **others)


_GROUND_TRUTH_ENDINGS = ("_dseg.nii.gz", "_dseg.nii", "_desc-landmarks.tsv")


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return Path(os.path.abspath(path))  # the pair using it fails when it reads it


class _GroundTruthIndex:
    """File-name lookup of ground-truth files, searched recursively once."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self._files: dict[str, list[Path]] = defaultdict(list)
        if root is None:
            return
        # os.walk skips folders that cannot be listed or vanish meanwhile, and does not
        # follow directory symlinks (no loops); rglob stops on the first such folder.
        found = []
        for folder, _, names in os.walk(root):
            found += [Path(folder, n) for n in names if n.endswith(_GROUND_TRUTH_ENDINGS)]
        for path in sorted(found):
            self._files[path.name].append(_resolved(path))

    def find(self, img: _Image, label: str, kind: str) -> str | None:
        prefix = f"sub-{img.subject}" + (f"_ses-{img.session}" if img.session else "")
        spaces = [label] + ([img.suffix] if img.suffix != label else [])
        names = (
            (
                [f"{prefix}_space-{s}_dseg.nii.gz" for s in spaces]
                + [f"{prefix}_space-{s}_dseg.nii" for s in spaces]
            )
            if kind == "dseg"
            else ([f"{prefix}_space-{s}_desc-landmarks.tsv" for s in spaces])
        )
        for name in names:
            hits = self._files.get(name)
            if hits:
                # Prefer the copy in the subject's own folder when a name occurs twice.
                own = [h for h in hits if f"sub-{img.subject}" in h.parts]
                return str((own or hits)[0])
        return None


def select_subjects(
    layout: BIDSLayout, requested: Sequence[str], *, scan: DatasetScan | None = None
) -> list[str]:
    """The subjects to process: all, or the requested ones that exist.

    Subjects come from the folder listing (``scan``, made here when not given), not
    from ``layout.get_subjects()``, which walks every indexed file.
    """
    available = list((scan or scan_dataset(layout.root)).subjects)
    if not available:
        raise NotBidsError(f"not a BIDS dataset: no sub-<label> folders in {layout.root}")
    if not requested:
        return available
    labels = normalize_participant_labels(requested)
    found = [s for s in labels if s in available]
    absent = [s for s in labels if s not in available]
    if not found:
        shown = ", ".join(available[:10]) + (", ..." if len(available) > 10 else "")
        raise UsageError(
            f"--participant-label: none of {', '.join(absent)} found in the dataset "
            f"(subjects: {shown})"
        )
    if absent:
        LOG.warning("participant label(s) not found, skipped: %s", ", ".join(absent))
    return found


def _select_sessions(
    layout: BIDSLayout, root: Path, labels: Sequence[str], subjects: Sequence[str]
) -> dict[str, list[str]]:
    """Subject -> the requested sessions it has (NIfTI images in them); others left out.

    Raises:
        NoMatchError: A requested session has no image in any of the subjects (18).
    """
    files = layout.get(
        return_type="filename",
        subject=list(subjects),
        session=list(labels),
        extension=list(NIFTI_EXTENSIONS),
    )
    found: dict[str, set[str]] = defaultdict(set)
    for name in files:
        rel = "/" + Path(name).relative_to(root).as_posix()
        entities = layout.parse_file_entities(rel)
        subject, session = entities.get("subject"), entities.get("session")
        if subject in subjects and str(session) in labels:
            found[str(subject)].add(str(session))
    seen = {s for sessions in found.values() for s in sessions}
    absent = [label for label in labels if label not in seen]
    if absent:
        present = sorted(map(str, layout.get_sessions(subject=list(subjects))))
        shown = ", ".join(present[:10]) + (", ..." if len(present) > 10 else "")
        raise NoMatchError(
            f"--session-label: no image in session(s) {', '.join(absent)} in "
            f"{len(subjects)} subject(s) (sessions present: {shown or 'none'})"
        )
    return {s: [x for x in labels if x in found[s]] for s in subjects if found.get(s)}


def _unusable(path: str) -> str | None:
    """Why an indexed image cannot be used any more, or ``None`` when it is there."""
    name = os.path.basename(path)
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"{name} is a broken symlink (its target does not exist)"
        return f"{name} no longer exists (removed after the dataset was indexed)"
    except OSError as exc:
        return f"cannot open {name} ({_why(exc)})"
    return None


def labelled_images(
    bids_dir: Path, paths: Sequence[Path], ground_truth: str | os.PathLike[str] | None
) -> list[LabelledImage]:
    """Each image of ``paths`` (inside ``bids_dir``) with its label map and landmarks, if any."""
    from bids.layout import parse_file_entities

    root = Path(bids_dir)
    index = _GroundTruthIndex(ground_truth)
    out = []
    for path in paths:
        # Relative to the root: a root path like /data/sub-99/bids must not set the subject.
        rel = "/" + Path(path).relative_to(root).as_posix()
        img = _as_image(Path(path), parse_file_entities(rel), root)
        if img is None:
            continue
        out.append(
            LabelledImage(
                path=img.path,
                subject=img.subject,
                session=img.session,
                suffix=img.suffix,
                dseg=index.find(img, img.suffix, "dseg"),
                landmarks=index.find(img, img.suffix, "landmarks"),
            )
        )
    return out


@dataclass(frozen=True)
class _Filters:
    """The run's fixed and moving filters (default suffixes filled in) as the CLI shows them."""

    fixed: dict[str, str]
    moving: list[dict[str, str]]
    fixed_option: str
    moving_options: list[str]
    cross_session: bool  # the fixed filter names a session: fixed image from that session

    @classmethod
    def of(cls, config: Config) -> _Filters:
        fixed = _with_default_suffix(config.fixed, DEFAULT_FIXED)
        moving = [_with_default_suffix(m, DEFAULT_MOVING) for m in config.moving]
        return cls(
            fixed=fixed,
            moving=moving,
            fixed_option=f"--fixed {describe_filter(fixed)}",
            moving_options=[f"--moving {describe_filter(m)}" for m in moving],
            cross_session=any(_LONG_TO_SHORT.get(k, k) == "ses" for k in fixed),
        )


#: ``(subject, session, moving filter index, reason)`` of a pair that cannot be made.
_Problem = tuple[str, str | None, int, str]


def _scan_input(config: Config) -> tuple[Path, DatasetScan]:
    """Check BIDS_DIR and the ground-truth folder; list the subject folders (warning about
    invalid labels)."""
    root = check_bids_dir(config.bids_dir).resolve()
    if config.ground_truth is not None and not Path(config.ground_truth).is_dir():
        raise InputDirMissingError(f"ground-truth folder not found: {config.ground_truth}")
    scan = scan_dataset(root)
    for name in scan.invalid:
        LOG.warning(
            "skipping folder %s: %r is not a BIDS subject label (ASCII letters and digits only)",
            name,
            name[4:],
        )
    if not scan.subjects and scan.invalid:
        raise NotBidsError(
            f"not a BIDS dataset: no sub-<label> folder with a valid label in {root} "
            f"(labels are ASCII letters and digits; skipped {', '.join(scan.invalid[:5])})"
        )
    return root, scan


def _select_images(
    layout: BIDSLayout,
    root: Path,
    scan: DatasetScan,
    config: Config,
    filters: _Filters,
    subjects: Sequence[str],
) -> tuple[list[_Image], list[list[_Image]]]:
    """The fixed images and the moving images of each filter in ``subjects`` (and the
    requested sessions).

    Raises:
        NoMatchError: A filter matches no image in ``subjects``.
    """
    fixed_images: list[_Image] = []
    moving_images: list[list[_Image]] = [[] for _ in filters.moving]
    if subjects:  # else every selected subject is broken: only failed rows to write
        fixed_images = _select(layout, root, filters.fixed, subjects, scan.subjects)
        moving_images = [_select(layout, root, m, subjects, scan.subjects) for m in filters.moving]
    if config.session_labels:
        wanted = set(config.session_labels)
        moving_images = [[i for i in imgs if i.session in wanted] for imgs in moving_images]
        if not filters.cross_session:  # a fixed image named by session stays (longitudinal)
            fixed_images = [i for i in fixed_images if i.session in wanted]
    for images, option in [
        (fixed_images, filters.fixed_option),
        *zip(moving_images, filters.moving_options, strict=True),
    ]:
        if subjects and not images:
            suffixes = sorted(
                layout.get_suffixes(subject=subjects, extension=list(NIFTI_EXTENSIONS))
            )
            raise NoMatchError(
                f"no NIfTI image matches {option} in {len(subjects)} subject(s); "
                f"suffixes present: {', '.join(suffixes) or 'none'}"
            )
    return fixed_images, moving_images


def _pair_session(
    subject: str,
    session: str | None,
    fixed_pool: Sequence[_Image],
    moving_here: Sequence[Sequence[_Image]],
    filters: _Filters,
) -> tuple[list[tuple[str | None, _Image, _Image]], list[_Problem]]:
    """The (session, fixed, moving) candidates of one subject/session, and its problems."""
    candidates: list[tuple[str | None, _Image, _Image]] = []
    problems: list[_Problem] = []
    for index, (imgs, option) in enumerate(zip(moving_here, filters.moving_options, strict=True)):
        movs = [i for i in imgs if i.session == session]
        if not fixed_pool:
            reason = f"missing modality: no file matches {filters.fixed_option}"
            problems.append((subject, session, index, reason))
            continue
        if not movs:
            problems.append(
                (subject, session, index, f"missing modality: no file matches {option}")
            )
            continue
        for moving in movs:
            fixed, reason = _choose_fixed(fixed_pool, moving, filters.fixed_option)
            if fixed is None:
                problems.append((subject, session, index, reason))
            else:
                candidates.append((session, fixed, moving))
    return candidates, problems


def _pair_subject(
    subject: str,
    fixed_images: Sequence[_Image],
    moving_images: Sequence[Sequence[_Image]],
    filters: _Filters,
    requested_sessions: Sequence[str],
) -> tuple[list[tuple[str | None, _Image, _Image]], list[_Problem]]:
    """The candidates and problems of one subject, session by session."""
    fixed_here = [i for i in fixed_images if i.subject == subject]
    moving_here = [[i for i in imgs if i.subject == subject] for imgs in moving_images]
    sessions = sorted(
        {i.session for i in fixed_here if not filters.cross_session}
        | {i.session for imgs in moving_here for i in imgs},
        key=lambda s: (s is not None, s or ""),
    )
    candidates: list[tuple[str | None, _Image, _Image]] = []
    problems: list[_Problem] = []
    for session in sessions or requested_sessions or [None]:
        fixed_pool = (
            fixed_here
            if filters.cross_session
            else [i for i in fixed_here if i.session == session]
        )
        found, failed = _pair_session(subject, session, fixed_pool, moving_here, filters)
        candidates += found
        problems += failed
    return candidates, problems


def _select_subjects_and_sessions(
    layout: BIDSLayout, root: Path, scan: DatasetScan, config: Config
) -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    """The subjects to pair, those whose folder cannot be indexed (subject -> reason), and
    the requested sessions each subject has (empty without ``--session-label``)."""
    selected = select_subjects(layout, config.participant_labels, scan=scan)
    # A subject whose folder cannot be indexed fails on its own; the others still run.
    broken = {s: scan.problems[s] for s in selected if s in scan.problems}
    subjects = [s for s in selected if s not in broken]
    sessions_of: dict[str, list[str]] = {}
    if config.session_labels and subjects:
        sessions_of = _select_sessions(layout, root, config.session_labels, subjects)
        subjects = [s for s in subjects if s in sessions_of]
    return subjects, broken, sessions_of


def _pair_all(
    subjects: Sequence[str],
    broken: Mapping[str, str],
    sessions_of: Mapping[str, list[str]],
    fixed_images: Sequence[_Image],
    moving_images: Sequence[Sequence[_Image]],
    filters: _Filters,
) -> tuple[list[tuple[str | None, _Image, _Image]], list[_Problem]]:
    """The candidates of every subject, and the problems: a broken subject has one per
    moving filter."""
    candidates: list[tuple[str | None, _Image, _Image]] = []
    problems: list[_Problem] = []
    for subject, reason in broken.items():
        problems += [(subject, None, index, reason) for index in range(len(filters.moving))]
    for subject in subjects:
        found, failed = _pair_subject(
            subject, fixed_images, moving_images, filters, sessions_of.get(subject, [])
        )
        candidates += found
        problems += failed
    return candidates, problems


def _make_pairs(
    unique: Sequence[tuple[str | None, _Image, _Image]],
    labels: Mapping[str, str],
    ground_truth: str | None,
) -> tuple[list[Pair], list[MissingPair]]:
    """One :class:`Pair` per candidate with its ground truth; a :class:`MissingPair` for
    one whose image is gone or whose outputs would overwrite another pair's."""
    gt = _GroundTruthIndex(ground_truth)
    pairs: list[Pair] = []
    missing: list[MissingPair] = []
    taken: set[str] = set()
    gone: dict[str, str | None] = {}
    for session, fixed, moving in unique:
        fixed_label, moving_label = labels[fixed.path], labels[moving.path]
        # The index may be older than the files (a cached index, a link whose target went).
        reason = None
        for img in (fixed, moving):
            if img.path not in gone:
                gone[img.path] = _unusable(img.path)
            reason = reason or gone[img.path]
        if reason:
            missing.append(MissingPair(moving.subject, session, fixed_label, moving_label, reason))
            continue
        pid = naming.pair_id(moving.subject, session, fixed_label, moving_label)
        if pid in taken:
            missing.append(
                MissingPair(
                    moving.subject,
                    session,
                    fixed_label,
                    moving_label,
                    f"{Path(moving.path).name} would overwrite another pair's outputs "
                    f"({pid}); narrow the filters",
                )
            )
            continue
        taken.add(pid)
        pairs.append(
            Pair(
                subject=moving.subject,
                session=session,
                fixed=fixed.path,
                moving=moving.path,
                fixed_label=fixed_label,
                moving_label=moving_label,
                fixed_dseg=gt.find(fixed, fixed_label, "dseg"),
                moving_dseg=gt.find(moving, moving_label, "dseg"),
                fixed_landmarks=gt.find(fixed, fixed_label, "landmarks"),
                moving_landmarks=gt.find(moving, moving_label, "landmarks"),
                pair_id=pid,
            )
        )
    return pairs, missing


def _problem_rows(
    problems: Sequence[_Problem], filters: _Filters, needed: Mapping[str, list[str]]
) -> list[MissingPair]:
    """The problems as failed rows, labelled as their filters would have labelled them."""
    fixed_default = _filter_label(filters.fixed, needed)
    return [
        MissingPair(
            subject, session, fixed_default, _filter_label(filters.moving[index], needed), reason
        )
        for subject, session, index, reason in problems
    ]


def _pair_order(p: Pair | MissingPair) -> tuple[str, str, str, str]:
    return (p.subject, p.session or "", p.moving_label, p.fixed_label)


def _sorted_and_limited(
    pairs: list[Pair], missing: list[MissingPair], max_pairs: int | None
) -> tuple[list[Pair], list[MissingPair]]:
    """Pairs and failed rows by subject, session and labels; at most ``max_pairs`` pairs."""
    pairs.sort(key=_pair_order)
    missing.sort(key=_pair_order)
    if max_pairs is not None and len(pairs) > max_pairs:
        LOG.info("--max-pairs %d: registering %d of %d pair(s)", max_pairs, max_pairs, len(pairs))
        pairs = pairs[:max_pairs]
    LOG.info(
        "%d pair(s) in %d subject(s); %d cannot be run",
        len(pairs),
        len({p.subject for p in pairs}),
        len(missing),
    )
    return pairs, missing


def find_pairs(
    config: Config, layout: BIDSLayout | None = None
) -> tuple[list[Pair], list[MissingPair]]:
    """Select the images of the run and pair them.

    Steps: check and scan the dataset, index it, select subjects and sessions, select
    the fixed and moving images, pair them per subject and session, label them, and
    make the pairs (with their ground truth) and the failed rows.

    Args:
        config: The run configuration (``bids_dir``, ``participant_labels``,
            ``fixed``, ``moving``, ``ground_truth``, ``work_dir``, ``max_pairs``).
        layout: An already built layout (tests); built from ``config`` otherwise.

    Returns:
        ``(pairs, missing)``: the pairs to register, sorted by subject,
        session and labels; and one :class:`MissingPair` per subject/session
        and moving filter that cannot be run, to be reported as failed rows.

    Raises:
        InputDirMissingError: BIDS_DIR or the ground-truth folder does not exist (66).
        NotBidsError: BIDS_DIR is not a BIDS dataset (16).
        NoMatchError: The fixed filter, or one moving filter, matches no image (18).
        UsageError: Invalid filters or participant labels (64).
    """
    root, scan = _scan_input(config)
    if layout is None:
        LOG.info("indexing BIDS dataset %s", root)
        layout = load_layout(root, Path(config.work_dir) / "bids_db", scan=scan)
    subjects, broken, sessions_of = _select_subjects_and_sessions(layout, root, scan, config)
    filters = _Filters.of(config)
    fixed_images, moving_images = _select_images(layout, root, scan, config, filters, subjects)
    candidates, problems = _pair_all(
        subjects, broken, sessions_of, fixed_images, moving_images, filters
    )
    # The same image may match two moving filters; register it once.
    unique = list({(f.path, m.path): (s, f, m) for s, f, m in candidates}.values())
    needed, labels = _labels(unique)
    pairs, missing = _make_pairs(unique, labels, config.ground_truth)
    missing += _problem_rows(problems, filters, needed)
    return _sorted_and_limited(pairs, missing, config.max_pairs)
