"""BIDS validation of the input with ``bids-validator-deno`` (participant level only).

Its findings are reported, never fatal: mmreg pairs any suffix, also ones BIDS does not
define (``US``, ``DXA``), which the validator calls errors. The terminal gets one summary
line and the first few errors; the validator's whole JSON report goes to
``OUTPUT_DIR/logs/<run-id>/bids_validator.json`` and every issue to that run's
``mmreg.log``. A missing validator is a warning (once per process), as is a validator
that fails to run; an unreadable dataset has stopped the run before (exit 66 or 16).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mmreg.atomic import atomic_write_text

LOG = logging.getLogger("mmreg.bids_app.validator")

#: The validator's executable (the Deno build of the reference validator; runs offline).
BIDS_VALIDATOR = "bids-validator-deno"
#: Errors shown on the terminal; the rest are in the log.
SHOWN_ISSUES = 5
#: Seconds after which the validator is given up on (a huge dataset on a slow disk).
TIMEOUT_S = 1800.0
REPORT_NAME = "bids_validator.json"

_warned_missing = False


def _issue_line(issue: dict[str, Any]) -> str:
    code = issue.get("code", "?")
    sub = f" ({issue['subCode']})" if issue.get("subCode") else ""
    where = issue.get("location") or ""
    return f"{code}{sub} {where}".strip()


def validate_bids(
    bids_dir: Path, log_dir: Path | None = None, *, cache_dir: Path | None = None
) -> dict[str, int] | None:
    """Validate ``bids_dir``; log the findings; return ``{"error": n, "warning": m}``.

    ``cache_dir`` holds Deno's cache (``DENO_DIR``, unless the user set it), so that
    nothing is written under HOME (which may be missing or read-only).
    Returns ``None`` when the validator is missing or could not run (a warning says so).
    """
    global _warned_missing
    exe = shutil.which(BIDS_VALIDATOR)
    if exe is None:
        if not _warned_missing:
            LOG.warning(
                "%s not found on PATH: BIDS validation skipped (install it, or pass "
                "--skip-bids-validation to silence this)",
                BIDS_VALIDATOR,
            )
            _warned_missing = True
        return None
    env = dict(os.environ)
    if cache_dir is not None and not env.get("DENO_DIR"):
        env["DENO_DIR"] = str(cache_dir)
    started = time.monotonic()
    done: subprocess.CompletedProcess[str] | None = None
    try:
        done = subprocess.run(
            [exe, str(bids_dir), "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        report = json.loads(done.stdout)
        issues = list(report["issues"]["issues"])
    except subprocess.TimeoutExpired:
        LOG.warning("BIDS validation skipped: %s took over %.0f s", BIDS_VALIDATOR, TIMEOUT_S)
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        stderr = " ".join((done.stderr if done is not None else "").split())[:200]
        LOG.warning(
            "BIDS validation could not run (%s%s); continuing without it",
            type(exc).__name__,
            f": {stderr}" if stderr else "",
        )
        return None
    elapsed = time.monotonic() - started
    where = ""
    if log_dir is not None:
        try:
            where = (
                f"; full report in {atomic_write_text(Path(log_dir) / REPORT_NAME, done.stdout)}"
            )
        except OSError as exc:  # a full disk: the issues still go to the log below
            LOG.warning("could not write the BIDS validator report: %s", exc.strerror or exc)
    counts = Counter(str(i.get("severity", "warning")) for i in issues)
    errors = [i for i in issues if i.get("severity") == "error"]
    level = logging.WARNING if errors else logging.INFO
    LOG.log(
        level,
        "BIDS validation of %s: %d error(s), %d warning(s) in %.1f s (not fatal: mmreg also "
        "pairs suffixes BIDS does not define)%s",
        bids_dir,
        counts["error"],
        counts["warning"],
        elapsed,
        where,
    )
    for issue in errors[:SHOWN_ISSUES]:
        LOG.warning("  BIDS error: %s", _issue_line(issue))
    if len(errors) > SHOWN_ISSUES:
        LOG.warning("  ... and %d more BIDS error(s)", len(errors) - SHOWN_ISSUES)
    for issue in issues:
        LOG.debug("BIDS %s: %s", issue.get("severity"), _issue_line(issue))
    return {"error": counts["error"], "warning": counts["warning"]}
