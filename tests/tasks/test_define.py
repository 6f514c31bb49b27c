"""The task decorator: a task that raises leaves its traceback for the run's reason."""

from __future__ import annotations

import time

import pytest

from mmreg.bids_app.run import engine_failure_reason
from mmreg.tasks.define import CRASH_REPORT, task


@task(outputs=["out"])
def Explodes(x: int) -> int:
    """A task with a bug."""
    raise ZeroDivisionError(f"{x} / 0")


def test_a_task_that_raises_leaves_its_traceback(tmp_path):
    start = time.time()
    with pytest.raises(Exception) as caught:
        Explodes(x=1)(worker="debug", cache_root=tmp_path)
    reports = list(tmp_path.glob(f"*/{CRASH_REPORT}"))
    assert len(reports) == 1
    assert "ZeroDivisionError: 1 / 0" in reports[0].read_text()
    reason, source = engine_failure_reason(caught.value, tmp_path, since=start)
    assert (reason, source) == ("ZeroDivisionError: 1 / 0", reports[0])
