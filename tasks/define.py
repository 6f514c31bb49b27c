"""One way to define mmreg's Pydra python tasks: functions that pickle by reference.

Pydra hashes a python task by the source of its function (``inspect.getsource``), once
in the submitting process and again in the worker that receives the pickled job. With
``@python.define`` the module attribute of the task's name is the generated *class*,
not the function, so cloudpickle cannot find the function by name and pickles it by
value. cloudpickle 3.1.3 then gives it ``co_filename='<dynamic-code>'``: the worker
cannot read its source, hashes the byte code instead, and Pydra stops every job with
"Input field hashes have changed during the execution". Keeping the plain function
importable under its own qualified name makes cloudpickle pickle it by reference, so
both processes hash the same source whatever cloudpickle does with dynamic code.

Example:
    >>> import pickle
    >>> import cloudpickle
    >>> from mmreg.tasks.image import ReorientImage
    >>> function = ReorientImage().function
    >>> function.__qualname__
    'ReorientImage_function'
    >>> pickle.loads(cloudpickle.dumps(function)) is function  # by reference
    True
"""

from __future__ import annotations

import contextlib
import functools
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydra.compose import python

from mmreg import notices
from mmreg.cache import seal
from mmreg.interrupts import interrupts_watched, raise_if_interrupted

#: Suffix of the module attribute that holds a task's plain function.
FUNCTION_SUFFIX = "_function"
#: What a task that raised leaves in its work folder: the traceback, for the run's one-line
#: reason (hidden, so the seal never lists it). Tasks turn data problems into failed rows;
#: this is for the rest (a bug, an interrupt, memory).
CRASH_REPORT = ".mmreg-crash.txt"


def task(*, outputs: Sequence[str]) -> Callable[[Callable[..., Any]], Any]:
    """``@python.define(outputs=...)`` whose function pickles by reference.

    The function stays importable as ``<module>.<Name>_function`` (also its
    ``__qualname__``); the task class keeps the function's name. Two more things every
    task does: a SIGINT/SIGTERM during the task stops it even if a library swallowed the
    signal (:mod:`mmreg.interrupts`; the engine then keeps no result), warnings logged
    while it runs are collected for its manifest (:mod:`mmreg.notices`), a finished
    task seals the files it wrote (:func:`mmreg.cache.seal`), and a task that raised leaves
    its traceback in :data:`CRASH_REPORT`.
    """

    def wrap(function: Callable[..., Any]) -> Any:
        name = function.__name__
        if "<locals>" in function.__qualname__:
            raise TypeError(f"{name}: define mmreg tasks at module level")
        qualname = f"{name}{FUNCTION_SUFFIX}"

        # Pydra hashes the source of ``function`` (inspect follows __wrapped__).
        @functools.wraps(function)
        def run_task(*args: Any, **kwargs: Any) -> Any:
            try:
                with interrupts_watched() as watch, notices.collecting():
                    outputs = function(*args, **kwargs)
                    raise_if_interrupted(watch)
            except BaseException:
                with contextlib.suppress(OSError):  # the report must never hide the error
                    (Path.cwd() / CRASH_REPORT).write_text(traceback.format_exc())
                raise
            seal(Path.cwd())
            return outputs

        run_task.__qualname__ = qualname
        setattr(sys.modules[function.__module__], qualname, run_task)
        return python.define(run_task, outputs=list(outputs), name=name)

    return wrap
