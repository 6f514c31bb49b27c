"""Small JSON manifests that tasks hand to each other.

A manifest always has ``status`` (``ok``/``failed``); a failed one carries the
one-line ``error`` and the ``traceback``. Downstream tasks pass a failure on
instead of raising, so one bad subject never stops the workflow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmreg import notices
from mmreg.atomic import atomic_write_text
from mmreg.pipeline import Failure


def write_manifest(name: str, **fields: Any) -> Path:
    """Write ``fields`` as ``<cwd>/<name>`` (the task's own cache folder).

    ``warnings`` (an upstream manifest's) are merged with this task's own.
    """
    fields.setdefault("status", "ok")
    fields["warnings"] = notices.merge(fields.get("warnings", []), notices.current())
    return atomic_write_text(Path.cwd() / name, json.dumps(fields, indent=1, sort_keys=True))


def failed_manifest(name: str, failure: Failure, **fields: Any) -> Path:
    return write_manifest(
        name, status="failed", error=failure.reason, traceback=failure.traceback, **fields
    )


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
