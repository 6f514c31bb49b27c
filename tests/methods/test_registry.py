"""The method registry, the --methods syntax and shared helpers."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from mmreg.errors import UsageError
from mmreg.imaging.transform import Transform
from mmreg.methods import (
    ChainMethod,
    Method,
    available_methods,
    get_method,
    parse_methods,
    register_lazy,
    register_method,
    registry,
)
from mmreg.methods.base import (
    BaseMethod,
    engine_seed,
    one_line_reason,
    overlap_fraction,
    pyramid,
)

BASELINES = ["identity", "ants-rigid", "ants-affine", "ants-syn", "sitk-rigid", "sitk-affine"]


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish afterwards."""
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_LAZY", dict(registry._LAZY))
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))


def test_baselines_are_registered() -> None:
    names = available_methods()
    assert set(BASELINES) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", BASELINES)
def test_every_method_satisfies_the_protocol(name: str) -> None:
    method = get_method(name)
    assert isinstance(method, Method)
    assert method.name == name
    assert method.deformable == (name == "ants-syn")


def test_parse_methods_splits_strips_and_drops_duplicates() -> None:
    assert parse_methods("identity, ants-affine,sitk-rigid + ants-syn,identity") == [
        "identity",
        "ants-affine",
        "sitk-rigid+ants-syn",
    ]
    assert parse_methods(["identity", "sitk-rigid,identity"]) == ["identity", "sitk-rigid"]


@pytest.mark.parametrize(
    "spec", ["nope", "identity,nope", "identity+nope", "keymorph-nothing+ants-syn"]
)
def test_unknown_names_raise_a_one_line_usage_error(spec: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_methods(spec)
    message = str(info.value)
    assert "\n" not in message
    assert "unknown method" in message
    assert "ants-affine" in message  # lists what is available
    with pytest.raises(UsageError):
        get_method(spec.split(",")[-1])


@pytest.mark.parametrize("spec", ["", " , ", "identity++ants-affine", "+identity"])
def test_empty_specs_raise_usage_error(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_methods(spec)


def test_get_method_builds_chains() -> None:
    chain = get_method("sitk-rigid + ants-syn")
    assert isinstance(chain, ChainMethod)
    assert chain.name == "sitk-rigid+ants-syn"
    assert chain.deformable
    assert [m.name for m in chain.steps] == ["sitk-rigid", "ants-syn"]
    assert not get_method("identity+sitk-affine").deformable


def test_register_method_decorator(clean_registry: None) -> None:
    @register_method
    class Shift(BaseMethod):
        name = "test-shift"

        def _run(self, fixed, moving, *, initial, seed, device, threads):
            m = np.eye(4)
            m[0, 3] = 1.0
            return Transform.from_affine(m, ndim=fixed.ndim), {"seed": seed}

    assert "test-shift" in available_methods()
    assert parse_methods("identity+test-shift") == ["identity+test-shift"]
    assert isinstance(get_method("test-shift"), Shift)


def test_lazy_registration_imports_on_first_use(
    clean_registry: None, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mmreg_test_lazy_method.py").write_text(
        "from mmreg.methods import register_method\n"
        "from mmreg.methods.identity import IdentityMethod\n"
        "@register_method\n"
        "class Lazy(IdentityMethod):\n"
        "    name = 'test-lazy'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    register_lazy("test-lazy", "mmreg_test_lazy_method")
    assert "test-lazy" in available_methods()
    assert "mmreg_test_lazy_method" not in sys.modules
    assert get_method("test-lazy").name == "test-lazy"
    monkeypatch.delitem(sys.modules, "mmreg_test_lazy_method")


def test_engine_seed_is_never_zero() -> None:
    # SimpleITK reads seed 0 as "use the clock".
    assert engine_seed(0) != 0
    assert len({engine_seed(s) for s in range(100)}) == 100
    assert 0 < engine_seed(2**40) < 2**31


def test_pyramid_drops_levels_too_coarse_for_small_images() -> None:
    assert pyramid((100, 100, 100), (4, 2, 1), (2, 1, 0)) == ((4, 2, 1), (2, 1, 0))
    assert pyramid((40, 80, 80), (4, 2, 1), (2, 1, 0)) == ((2, 1), (1, 0))
    assert pyramid((9, 9), (4, 2, 1), (2, 1, 0)) == ((1,), (0,))


def test_one_line_reason_strips_itk_noise() -> None:
    exc = RuntimeError(
        "Exception thrown in SimpleITK ImageRegistrationMethod_Execute: "
        "/work/ITK/Modules/Core/itkMattes.hxx:412:\n"
        "ITK ERROR: MattesMutualInformationImageToImageMetricv4(0x55d5c0): "
        "All samples map outside moving image buffer"
    )
    assert one_line_reason(exc) == "All samples map outside moving image buffer"
    assert one_line_reason(ValueError("plain\nmessage")) == "plain message"


def test_overlap_fraction(pair2d) -> None:
    fixed, moving = pair2d.fixed, pair2d.moving
    assert overlap_fraction(fixed, moving, Transform.identity(2)) == 1.0
    half = np.eye(4)
    half[0, 3] = 0.5 * fixed.shape[0] * fixed.spacing[0]
    assert 0.2 < overlap_fraction(fixed, moving, Transform.from_affine(half, ndim=2)) < 0.8
    half[0, 3] = 1e4
    assert overlap_fraction(fixed, moving, Transform.from_affine(half, ndim=2)) == 0.0


class _Learned(BaseMethod):
    name = "learned-test"

    def __init__(self, *, model: str | None = None, params: dict[str, str] | None = None):
        self.model = model
        self.params = params or {}

    def _run(self, fixed, moving, *, initial, seed, device, threads):
        return Transform.identity(fixed.ndim), {}


@pytest.mark.usefixtures("clean_registry")
def test_parameters_and_model_reach_the_factory() -> None:
    registry.register_factory("learned-test", _Learned, model_family="learnedfam")
    method = get_method("learned-test:lambda=0.1:k=3", models={"learnedfam": "/w/m.pt"})
    assert method.params == {"lambda": "0.1", "k": "3"}
    assert method.model == "/w/m.pt"
    assert get_method("learned-test").model is None  # shipped weights
    assert parse_methods("learned-test : lambda=0.1 + identity") == [
        "learned-test:lambda=0.1+identity"
    ]
    assert registry.model_families(["identity", "ants-affine+learned-test:k=1"]) == ["learnedfam"]


@pytest.mark.usefixtures("clean_registry")
@pytest.mark.parametrize("spec", ["learned-test:lambda", "learned-test:=1", "learned-test:a=b c"])
def test_malformed_parameters_are_usage_errors(spec: str) -> None:
    registry.register_factory("learned-test", _Learned, model_family="learnedfam")
    with pytest.raises(UsageError, match="parameter"):
        parse_methods(spec)


def test_methods_without_parameters_refuse_them() -> None:
    with pytest.raises(UsageError, match="takes no parameters"):
        get_method("ants-affine:lambda=1")
