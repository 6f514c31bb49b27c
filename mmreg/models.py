"""Model checkpoints: one file format, verified before it is loaded.

A checkpoint is a ``torch.save`` of ``{"config", "state_dict", "metadata"}``:

- ``config``: what the model class needs to rebuild itself (plain JSON types);
- ``state_dict``: the weights;
- ``metadata``: ``method``, ``mmreg_version``, the training data summary, and
  ``weights_sha256`` (a digest of the tensors themselves, names and dtypes included).

Two checks guard every load:

1. **Before** ``torch.load`` the file's sha256 is compared with the expected one:
   the package manifest ``data/models/SHA256SUMS`` for shipped weights, or the
   ``<file>.sha256`` sidecar that ``mmreg train`` writes next to a user's checkpoint
   (or a digest given by the caller). A mismatch is refused without unpickling.
2. **After** loading (with ``weights_only=True``, so no code runs), the tensors must
   hash to ``metadata["weights_sha256"]``: a truncated or edited file is refused.

The file sha256 is also what the work-dir cache hashes, so new weights never reuse
results computed with old ones.

Example:
    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "m.pt"
    >>> digest = save_checkpoint(path, method="demo", config={"n": 1},
    ...                          state_dict={"w": torch.ones(2)}, metadata={})
    >>> load_checkpoint(path, method="demo").config
    {'n': 1}
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import threading
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mmreg
from mmreg.atomic import atomic_path, atomic_write_text
from mmreg.errors import InputError
from mmreg.provenance import sha256_file
from mmreg.typing import PathLike

__all__ = [
    "MODEL_DIR",
    "Checkpoint",
    "default_model_path",
    "expected_file_sha256",
    "load_checkpoint",
    "model_record",
    "resolve_model",
    "save_checkpoint",
    "shipped_sha256",
    "verified_model_paths",
    "weights_sha256",
]

#: Where the shipped demo weights live (package data).
MODEL_DIR = Path(__file__).resolve().parent / "data" / "models"
#: ``sha256sum``-format manifest of the shipped weights.
MANIFEST = MODEL_DIR / "SHA256SUMS"
SIDECAR_SUFFIX = ".sha256"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint."""

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, Any]
    metadata: dict[str, Any]
    sha256: str


def weights_sha256(state_dict: Mapping[str, Any]) -> str:
    """Digest of a state dict: names, dtypes, shapes and bytes, in name order.

    Independent of how the file was pickled, so it identifies the weights themselves.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    *,
    method: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> str:
    """Write a checkpoint atomically, with a ``.sha256`` sidecar; return the file's sha256.

    ``metadata`` gains ``method``, ``mmreg_version`` and ``weights_sha256``. The file is
    byte-reproducible for equal inputs (torch writes no timestamps).
    """
    import torch

    path = Path(path)
    weights = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    meta = {
        **dict(metadata),
        "method": method,
        "mmreg_version": mmreg.__version__,
        "weights_sha256": weights_sha256(weights),
    }
    buffer = io.BytesIO()
    torch.save({"config": dict(config), "state_dict": weights, "metadata": meta}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    digest = sha256_file(path)
    atomic_write_text(path.with_name(path.name + SIDECAR_SUFFIX), f"{digest}  {path.name}\n")
    return digest


def _read_sums(path: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def shipped_sha256(path: str | Path) -> str | None:
    """The manifest's sha256 for a shipped weights file, or ``None`` if not shipped."""
    path = Path(path).resolve()
    if path.parent != MODEL_DIR:
        return None
    return _read_sums(MANIFEST).get(path.name)


def expected_file_sha256(path: str | Path) -> str | None:
    """The sha256 a model file must have: from the package manifest or its sidecar."""
    path = Path(path)
    shipped = shipped_sha256(path)
    if shipped is not None:
        return shipped
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    return _read_sums(sidecar).get(path.name)


def default_model_path(method: str) -> Path:
    """The shipped weights of a learned method family (e.g. ``keymorph``)."""
    return MODEL_DIR / f"{method}.pt"


def resolve_model(method: str, override: PathLike | None = None) -> Path:
    """The weights file to use: the user's ``--model`` override or the shipped file.

    Raises:
        InputError: When the file does not exist (one line, naming the option).
    """
    path = Path(override).expanduser() if override else default_model_path(method)
    if not path.is_file():
        if override:
            raise InputError(f"model file for {method} not found: {path} (from --model)")
        raise InputError(
            f"no shipped weights for {method} at {path}; train them with "
            f"'mmreg train {method} ...' and pass --model {method}=PATH"
        )
    return path.resolve()


def model_record(method: str, override: str | Path | None = None) -> dict[str, str]:
    """``{"path", "sha256"}`` of the weights a run will use (see :func:`resolve_model`)."""
    path = resolve_model(method, override)
    return {"path": str(path), "sha256": sha256_file(path)}


def verified_model_paths(records: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Family -> path, after checking each file still has the recorded sha256.

    A run records the digests when it starts; a file replaced while jobs wait in a queue
    must not silently mix two models in one study.

    Raises:
        InputError: When a file is missing or changed.
    """
    out: dict[str, str] = {}
    for family, record in records.items():
        path = Path(record["path"])
        if not path.is_file():
            raise InputError(f"model file for {family} not found: {path}")
        if sha256_file(path) != record["sha256"]:
            raise InputError(f"model file {path} changed since the run started")
        out[family] = str(path)
    return out


#: ``torch.save`` writes a zip archive; anything else is refused before it is unpickled.
_ZIP_MAGIC = b"PK\x03\x04"
#: The class a weights-only load refused, as torch names it ("GLOBAL argparse.Namespace").
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _load_failure(path: Path, exc: BaseException) -> InputError:
    """A one-line reason for a failed ``torch.load``, in mmreg's words.

    torch's own message is never passed on: for a refused class it advises loading with
    ``weights_only`` switched off, which would run whatever code the file carries.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        found = _REFUSED_GLOBAL.search(text)
        what = (
            f"Python objects other than tensors and plain values ({found.group(1)})"
            if found
            else "data that is not tensors and plain values (or is corrupt)"
        )
        return InputError(
            f"model file {path} holds {what}; mmreg never runs code from a model file, so "
            "it cannot be used (save weights with 'mmreg train' or mmreg.models.save_checkpoint)"
        )
    if isinstance(exc, EOFError | zipfile.BadZipFile) or "PytorchStreamReader" in text:
        return InputError(f"model file {path} is truncated or corrupt (an incomplete zip archive)")
    return InputError(
        f"cannot read model file {path}: not a valid checkpoint ({type(exc).__name__})"
    )


def _read_payload(path: Path) -> dict[str, Any]:
    """``torch.load`` (tensors and plain values only) and a check of the checkpoint layout.

    Raises:
        InputError: One line naming the file, for anything that is not an mmreg checkpoint.
    """
    import torch

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if not data:
        raise InputError(f"model file {path} is empty")
    if not data.startswith(_ZIP_MAGIC):
        # A bare pickle (or any other file): never unpickled, not even weights-only.
        raise InputError(f"model file {path} is not a PyTorch checkpoint (no torch.save archive)")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise _load_failure(path, exc) from None
    keys = ("config", "state_dict", "metadata")
    if not isinstance(payload, dict) or not all(isinstance(payload.get(k), dict) for k in keys):
        raise InputError(
            f"model file {path} is not an mmreg checkpoint (config/state_dict/metadata dicts)"
        )
    bad = [k for k, v in payload["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"model file {path} has weights that are not tensors ({bad[0]!r})")
    return {k: dict(payload[k]) for k in keys}


def load_checkpoint(
    path: str | Path, *, method: str, expected_sha256: str | None = None
) -> Checkpoint:
    """Verify and load a checkpoint on the CPU.

    Args:
        path: The ``.pt`` file.
        method: The method family the checkpoint must belong to.
        expected_sha256: The file's expected sha256; by default from the package
            manifest or the ``.sha256`` sidecar (no expectation if neither exists; the
            weights digest inside the file is still checked).

    Raises:
        InputError: One line, for a missing, unreadable, tampered or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise InputError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    expected = expected_sha256 or expected_file_sha256(path)
    if expected is not None and digest != expected.lower():
        raise InputError(
            f"model file {path.name} has sha256 {digest[:12]}... but {expected[:12]}... was "
            "expected; the file is corrupt or was replaced"
        )
    payload = _read_payload(path)
    metadata = payload["metadata"]
    if metadata.get("method") != method:
        raise InputError(
            f"{path.name} holds a {metadata.get('method')!r} model, not a {method!r} model"
        )
    if weights_sha256(payload["state_dict"]) != metadata.get("weights_sha256"):
        raise InputError(f"the weights in {path.name} do not match their recorded digest")
    return Checkpoint(
        path=path.resolve(),
        config=payload["config"],
        state_dict=payload["state_dict"],
        metadata=metadata,
        sha256=digest,
    )


_NETWORKS: dict[tuple[str, str, str], Any] = {}
_NETWORKS_LOCK = threading.Lock()


def load_network(
    path: str | Path | None,
    *,
    family: str,
    build: Callable[[Mapping[str, Any]], Any],
    name: str,
    how_to_train: str,
) -> Any:
    """A frozen network from a verified checkpoint, on the CPU in eval mode (cached).

    Args:
        path: A ``mmreg train <family>`` checkpoint; ``None``: the shipped weights.
        family: The checkpoint's method family (``dns``).
        build: Makes the (untrained) network from the checkpoint's config.
        name: How messages call it (``DNS``).
        how_to_train: The end of the message when there are no shipped weights.

    Raises:
        InputError: One line, when there are no shipped weights, or the file is missing,
            tampered or not a usable checkpoint of ``family``.
    """
    from mmreg.provenance import sha256_file

    if path is None:
        path = default_model_path(family)
        if not path.is_file():
            raise InputError(f"no shipped {name} weights; {how_to_train}")
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"{name} model file not found: {path}")
    key = (family, str(path), sha256_file(path))
    with _NETWORKS_LOCK:
        if key in _NETWORKS:
            return _NETWORKS[key]
    ckpt = load_checkpoint(path, method=family, expected_sha256=None)
    key = (family, str(path), ckpt.sha256)  # the file may have been replaced meanwhile
    try:
        net = build(ckpt.config)
        net.load_state_dict(ckpt.state_dict)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise InputError(f"{path.name} is not a usable {name} checkpoint: {reason}") from None
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    with _NETWORKS_LOCK:
        _NETWORKS[key] = net
    return net


def parse_models(
    items: Sequence[str] | None, methods: Sequence[str], *, extra: Sequence[str] = ()
) -> dict[str, str]:
    """``["keymorph=/w/km.pt"]`` -> ``{"keymorph": "/w/km.pt"}`` (absolute, existing files).

    ``extra`` families are accepted whatever the methods (the group level's subject
    matching reads ``contrastive`` weights).

    Raises:
        UsageError: For an item without ``=``, a family no listed method uses, or a
            missing file.
    """
    if not items:
        return {}
    from mmreg.errors import UsageError
    from mmreg.methods import model_families

    families = list(model_families(methods))
    families += [f for f in extra if f not in families]
    parsed: dict[str, str] = {}
    for item in items:
        family, sep, value = item.partition("=")
        family, value = family.strip(), value.strip()
        if not sep or not family or not value:
            raise UsageError(f"--model {item}: expected FAMILY=PATH, e.g. keymorph=model.pt")
        if family not in families:
            used = ", ".join(families) or "none"
            raise UsageError(
                f"--model {item}: no selected method uses {family!r} weights "
                f"(learned families in --methods: {used})"
            )
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"--model {item}: file not found: {path}")
        parsed[family] = str(path)
    return parsed
