"""Every ``>>>`` example in the package runs, as TorchIO and MONAI run theirs."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

#: Modules whose import needs an optional extra or a device.
OPTIONAL = ("mmreg.interfaces.nipype",)


#: The packages (mapped from the top-level folders, see setup.cfg's package_dir).
PACKAGES = (
    "mmreg",
    "mmreg.bids_app",
    "mmreg.imaging",
    "mmreg.imaging.phantoms",
    "mmreg.imaging.phantoms.wholebody",
    "mmreg.interfaces",
    "mmreg.methods",
    "mmreg.methods.contrastive",
    "mmreg.methods.features",
    "mmreg.methods.keymorph",
    "mmreg.methods.segguided",
    "mmreg.segmentation",
    "mmreg.tasks",
    "mmreg.workflows",
)


def _modules() -> list[str]:
    names = set(PACKAGES)
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names |= {m.name for m in pkgutil.iter_modules(path, f"{package}.") if not m.ispkg}
    return sorted(n for n in names if not n.startswith(OPTIONAL))


@pytest.mark.parametrize("name", _modules())
def test_examples_run(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
