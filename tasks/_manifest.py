"""The typed JSON manifests that tasks hand to each other.

Every manifest has ``status`` (``ok``/``failed``); a failed one carries the one-line
``error`` and the ``traceback``. Downstream tasks pass a failure on instead of raising, so
one bad subject never stops the workflow. Each task writes its manifest into its own work
folder and the next task reads it back as the same record.

Example:
    >>> import os, tempfile
    >>> os.chdir(tempfile.mkdtemp())
    >>> path = Prepared(fixed="f.nii.gz", moving="m.nii.gz", pair_id="p").write()
    >>> Prepared.read(path).pair_id, Prepared.read(path).ok
    ('p', True)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from mmreg import notices
from mmreg.atomic import atomic_write_text
from mmreg.pipeline import Failure

_M = TypeVar("_M", bound="_Manifest")


@dataclass(frozen=True)
class _Manifest:
    """Fields every manifest has."""

    #: File name in the task's work folder.
    NAME: ClassVar[str] = ""

    status: str = "ok"
    error: str = ""
    traceback: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def failed(self: _M, failure: Failure) -> _M:
        """This manifest, failed for ``failure``."""
        return replace(self, status="failed", error=failure.reason, traceback=failure.traceback)

    def write(self) -> Path:
        """Write ``<cwd>/<NAME>``; this task's own warnings join the upstream ones."""
        data = asdict(self)
        data["warnings"] = notices.merge(list(self.warnings), notices.current())
        text = json.dumps(data, indent=1, sort_keys=True)
        return atomic_write_text(Path.cwd() / self.NAME, text)

    @classmethod
    def read(cls: type[_M], path: str | Path) -> _M:
        data = json.loads(Path(path).read_text())
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in names}
        kept["warnings"] = tuple(kept.get("warnings", ()))
        return cls(**kept)


@dataclass(frozen=True)
class Prepared(_Manifest):
    """:class:`~mmreg.tasks.preprocess.PreparePair`'s output: the images a method gets.

    Attributes:
        pair_id: The pair (for a person reading the work dir).
        started_at: When preprocessing began (Unix time).
        fixed, moving: The preprocessed images.
        fixed_channels, moving_channels: Their extra channels (Dixon), or empty.
        initial: The pre-alignment transform.
        midcoronal: The mid-coronal slice record of a 2D/3D pair, or empty.
        preprocess_s: Preprocessing time (the throughput benchmark's split of wall time).
    """

    NAME: ClassVar[str] = "prepared.json"

    pair_id: str = ""
    started_at: float = 0.0
    fixed: str = ""
    moving: str = ""
    fixed_channels: str = ""
    moving_channels: str = ""
    initial: str = ""
    midcoronal: Mapping[str, Any] = field(default_factory=dict)
    preprocess_s: float = 0.0


@dataclass(frozen=True)
class Registered(_Manifest):
    """:class:`~mmreg.tasks.register.RegisterPair`'s output: one method's transform.

    Attributes:
        method: The method (or chain) that ran.
        transform: The fixed-to-moving transform file.
        runtime_s: Registration time.
        extras: The method's extra outputs (keypoints, chain steps, ...).
        label_maps: Predicted segmentations per side.
        midcoronal: Passed on from :class:`Prepared` for the derivatives.
    """

    NAME: ClassVar[str] = "result.json"

    method: str = ""
    transform: str = ""
    runtime_s: float | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    label_maps: Mapping[str, str] = field(default_factory=dict)
    midcoronal: Mapping[str, Any] = field(default_factory=dict)
