"""BIDS-safe names: labels, modality labels and the contract's output file names.

BIDS labels (the part after ``key-``) and suffixes are alphanumeric only, so
every name built here goes through :func:`sanitize_label` or
:func:`camel_method`. The output names are fixed by the contract in
``ARCHITECTURE.md``::

    sub-<l>[/ses-<s>]/anat/
        sub-<l>[_ses-<s>]_space-<fixed>_desc-<method>_<moving>.nii.gz
        sub-<l>[_ses-<s>]_from-<moving>_to-<fixed>_desc-<method>_mode-image_xfm.{txt,h5}

Modality labels (``<fixed>``/``<moving>``): the image's BIDS suffix, and only
where two images of one subject/session would otherwise get the same label,
the distinguishing entity values appended in CamelCase:

- ``acq``: the value with its first letter capitalised
  (``T2w`` + ``acq-highres`` -> ``T2wHighres``), because ``acq`` is what
  usually tells two acquisitions of one contrast apart;
- any other entity: its BIDS key capitalised, then the value
  (``run-2`` -> ``T2wRun2``, ``ce-gd`` -> ``T1wCeGd``), so that a run number
  cannot be mistaken for an acquisition label.

Entities are appended in the fixed order of :data:`LABEL_ENTITIES`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mmreg.errors import UsageError

#: Entities (BIDS keys) that may disambiguate two images of one suffix, in label order.
LABEL_ENTITIES = (
    "acq",
    "ce",
    "trc",
    "rec",
    "dir",
    "run",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "chunk",
)

_ALNUM = re.compile(r"[A-Za-z0-9]+")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")


def sanitize_label(value: object, *, what: str = "label") -> str:
    """Return ``value`` as a BIDS label, or raise when it is not one.

    A label is a non-empty string of ``[A-Za-z0-9]``. Nothing is silently
    rewritten, because a label that names an input must match files exactly
    and one that names an output must not escape its folder (``../x``).

    Args:
        value: The candidate label (integers, e.g. run numbers, are accepted).
        what: How to call the value in the error message.

    Raises:
        UsageError: If ``value`` is empty or holds anything but letters and digits.
    """
    text = str(value)
    if not _ALNUM.fullmatch(text):
        raise UsageError(f"invalid {what} {text!r}: BIDS labels are letters and digits only")
    return text


def camel_method(name: str) -> str:
    """The method name as a BIDS label, in camelCase.

    Words are separated by anything not alphanumeric (``-``, ``+``, ``_``, ``:``,
    ``=``), the first word keeps its case, the others get a capital first letter; a
    decimal point between digits becomes ``p`` so that ``0.1`` and ``01`` differ.

    Examples:
        >>> camel_method("ants-affine")
        'antsAffine'
        >>> camel_method("keymorph-affine+ants-syn")
        'keymorphAffineAntsSyn'
        >>> camel_method("sitk-rigid")
        'sitkRigid'
        >>> camel_method("keymorph-tps:lambda=0.1")
        'keymorphTpsLambda0p1'
    """
    words = [w for w in _NON_ALNUM.split(_DECIMAL_POINT.sub("p", name)) if w]
    if not words:
        raise UsageError(f"invalid method name {name!r}: no letters or digits")
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def modality_label(suffix: str, acq: str | None = None, **entities: str | int | None) -> str:
    """The modality label of an image: its suffix plus disambiguating entities.

    Args:
        suffix: The BIDS suffix (``T1w``, ``T2w``, ``US``, ``DXA``, ...).
        acq: The ``acq`` label, appended with a capital first letter.
        **entities: Other BIDS keys from :data:`LABEL_ENTITIES` (``run=2``,
            ``ce="gd"``); ``None`` values are skipped.

    Examples:
        >>> modality_label("T2w")
        'T2w'
        >>> modality_label("T2w", "highres")
        'T2wHighres'
        >>> modality_label("T2w", run=2)
        'T2wRun2'
        >>> modality_label("T1w", "mprage", ce="gd")
        'T1wMprageCeGd'
    """
    unknown = set(entities) - set(LABEL_ENTITIES)
    if unknown:
        raise ValueError(f"not a label entity: {', '.join(sorted(unknown))}")
    label = sanitize_label(suffix, what="suffix")
    if acq is not None:
        label += _capitalise(sanitize_label(acq, what="acq label"))
    for key in LABEL_ENTITIES[1:]:
        value = entities.get(key)
        if value is not None:
            label += _capitalise(key) + _capitalise(sanitize_label(value, what=f"{key} label"))
    return label


def _prefix(subject: str, session: str | None) -> str:
    prefix = f"sub-{sanitize_label(subject, what='subject label')}"
    if session:
        prefix += f"_ses-{sanitize_label(session, what='session label')}"
    return prefix


def subject_dir(subject: str, session: str | None = None, datatype: str = "anat") -> Path:
    """``sub-<l>[/ses-<s>]/anat``, relative to the output folder."""
    path = Path(f"sub-{sanitize_label(subject, what='subject label')}")
    if session:
        path /= f"ses-{sanitize_label(session, what='session label')}"
    return path / sanitize_label(datatype, what="datatype")


def evaluation_csv(subject: str) -> Path:
    """``sub-<l>/sub-<l>_evaluation.csv``, relative to the output folder.

    Example:
        >>> evaluation_csv("01").as_posix()
        'sub-01/sub-01_evaluation.csv'
    """
    label = sanitize_label(subject, what="subject label")
    return Path(f"sub-{label}") / f"sub-{label}_evaluation.csv"


#: :func:`evaluation_csv` of every subject, as a glob pattern.
EVALUATION_CSV_GLOB = "sub-*/sub-*_evaluation.csv"


def subject_report(subject: str) -> Path:
    """``sub-<l>.html``, relative to the output folder (where fMRIPrep puts its reports)."""
    return Path(f"sub-{sanitize_label(subject, what='subject label')}.html")


def warped_name(subject: str, session: str | None, fixed: str, moving: str, method: str) -> str:
    """``sub-<l>[_ses-<s>]_space-<fixed>_desc-<method>_<moving>.nii.gz``.

    ``method`` is the CLI method name; it is written in camelCase.
    """
    return (
        f"{_prefix(subject, session)}_space-{sanitize_label(fixed, what='fixed label')}"
        f"_desc-{camel_method(method)}_{sanitize_label(moving, what='moving label')}.nii.gz"
    )


def xfm_name(
    subject: str, session: str | None, fixed: str, moving: str, method: str, ext: str = "txt"
) -> str:
    """``sub-<l>[_ses-<s>]_from-<moving>_to-<fixed>_desc-<method>_mode-image_xfm.<ext>``.

    Args:
        ext: ``txt``/``mat`` (linear) or ``h5`` (any); a leading dot is ignored.
    """
    ext = ext.lstrip(".")
    if ext not in ("txt", "mat", "h5"):
        raise ValueError(f"unsupported transform extension {ext!r}")
    return (
        f"{_prefix(subject, session)}_from-{sanitize_label(moving, what='moving label')}"
        f"_to-{sanitize_label(fixed, what='fixed label')}_desc-{camel_method(method)}"
        f"_mode-image_xfm.{ext}"
    )


def keypoints_name(
    subject: str, session: str | None, fixed: str, moving: str, method: str, space: str
) -> str:
    """``sub-<l>[_ses-<s>]_from-<moving>_to-<fixed>_space-<space>_desc-<method>_keypoints.tsv``.

    The keypoints a learned method found on one image of a pair (``space`` is the fixed
    or the moving label); ``from``/``to`` keep two pairs sharing a fixed image apart.
    """
    if space not in (fixed, moving):
        raise ValueError(f"space {space!r} is neither {fixed!r} nor {moving!r}")
    return (
        f"{_prefix(subject, session)}_from-{sanitize_label(moving, what='moving label')}"
        f"_to-{sanitize_label(fixed, what='fixed label')}_space-{space}"
        f"_desc-{camel_method(method)}_keypoints.tsv"
    )


def dseg_name(subject: str, session: str | None, fixed: str, moving: str, space: str) -> str:
    """``sub-<l>[_ses-<s>]_from-<moving>_to-<fixed>_space-<space>_desc-segguided_dseg.nii.gz``.

    The segmentation a segmentation-guided method predicted on one image of a pair, on
    that image's grid; ``from``/``to`` keep two pairs sharing an image apart.

    Example:
        >>> dseg_name("01", None, "T2w", "US", "US")
        'sub-01_from-US_to-T2w_space-US_desc-segguided_dseg.nii.gz'
    """
    if space not in (fixed, moving):
        raise ValueError(f"space {space!r} is neither {fixed!r} nor {moving!r}")
    return (
        f"{_prefix(subject, session)}_from-{sanitize_label(moving, what='moving label')}"
        f"_to-{sanitize_label(fixed, what='fixed label')}_space-{space}"
        "_desc-segguided_dseg.nii.gz"
    )


def midcoronal_name(source: str) -> str:
    """The mid-coronal slice derivative of a 3D image: ``desc-midcoronal`` before its suffix.

    The 2D slice the participant level registered a 2D image (a DXA) to, synthesised
    along the spine of the 3D image (``--coronal-slice``); one file per Dixon channel.
    An existing ``desc`` entity is replaced.

    Example:
        >>> midcoronal_name("sub-01_acq-dixon_rec-fat_T1w.nii.gz")
        'sub-01_acq-dixon_rec-fat_desc-midcoronal_T1w.nii.gz'
        >>> midcoronal_name("sub-01_ses-2_desc-x_T1w.nii")
        'sub-01_ses-2_desc-midcoronal_T1w.nii.gz'
    """
    name = Path(source).name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name.rsplit(".", 1)[0]
    parts = stem.split("_")
    if len(parts) < 2 or "-" in parts[-1]:
        raise ValueError(f"{name}: not a BIDS file name with a suffix")
    entities = [e for e in parts[:-1] if not e.startswith("desc-")]
    return "_".join([*entities, "desc-midcoronal", parts[-1]]) + ".nii.gz"


def pair_id(subject: str, session: str | None, fixed: str, moving: str) -> str:
    """A readable unique key of one pair: ``sub-<l>[_ses-<s>]_from-<moving>_to-<fixed>``."""
    return (
        f"{_prefix(subject, session)}_from-{sanitize_label(moving, what='moving label')}"
        f"_to-{sanitize_label(fixed, what='fixed label')}"
    )


def bids_uri(path: str | os.PathLike[str], bids_dir: str | os.PathLike[str] | None = None) -> str:
    """A reference to an input file for ``Sources``-like sidecar fields.

    Files inside ``bids_dir`` become BIDS URIs ``bids:raw:<relative path>``
    (the derivatives' ``dataset_description.json`` should then carry
    ``"DatasetLinks": {"raw": <URI of BIDS_DIR>}``); anything else becomes a
    ``file://`` URI of its absolute path.
    """
    absolute = Path(os.path.abspath(path))
    if bids_dir is not None:
        root = Path(os.path.abspath(bids_dir))
        if absolute.is_relative_to(root):
            return f"bids:raw:{absolute.relative_to(root).as_posix()}"
    return absolute.as_uri()
