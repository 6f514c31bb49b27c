"""Process-wide runtime settings: thread limits and device choice."""

from __future__ import annotations

import os

from mmreg.errors import UsageError

_THREAD_VARIABLES = (
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)


def limit_threads(threads: int) -> None:
    """Cap ITK (SimpleITK and ANTs), BLAS and torch at ``threads`` threads.

    ``--nprocs`` tasks run side by side, each with this many threads, so that
    together they do not oversubscribe the cores; one thread also makes ITK's
    registration bit-reproducible.
    """
    threads = max(1, int(threads))
    for var in _THREAD_VARIABLES:
        os.environ[var] = str(threads)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # torch is optional for the classical methods
        pass


def usable_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


#: Accepted ``--device`` values.
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if device == "cuda" and not has_cuda:
        raise UsageError("--device cuda: no CUDA device is available (use --device auto)")
    return "cuda" if has_cuda else "cpu"
