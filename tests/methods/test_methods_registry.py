"""Method registry lookups and the doctest examples in camlens.methods."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import camlens.methods
from camlens.methods import GradCAMPlusPlus, available_methods, get_method
from camlens.methods.base import _REGISTRY

MODULES = sorted(info.name for info in pkgutil.iter_modules(camlens.methods.__path__))


@pytest.mark.parametrize("spelling", ["gradcam++", "Grad-CAM++", "gradcampp", "gradcam_pp"])
def test_gradcampp_spellings(spelling: str) -> None:
    assert type(get_method(spelling)) is GradCAMPlusPlus


def test_unknown_name_lists_suggestions() -> None:
    with pytest.raises(ValueError, match="Did you mean.*'gradcam'") as info:
        get_method("gradcan")
    assert "Available: ablationcam, cam, " in str(info.value)


def test_method_instance_is_passed_through() -> None:
    method = GradCAMPlusPlus()
    assert get_method(method) is method


SHIPPED = [
    "ablationcam", "cam", "eigencam", "eigengradcam", "fastscorecam", "gradcam", "gradcam++",
    "guidedbackprop", "guidedgradcam", "hirescam", "integratedgradients", "iscam", "layercam",
    "occlusion", "rise", "saliency", "scorecam", "smoothgrad", "smoothgradcam++", "sscam",
    "xgradcam",
]


def test_available_methods_lists_the_shipped_methods_sorted() -> None:
    # other tests may register a method of their own for a while: the shipped ones are all there
    names = available_methods()
    assert names == sorted(names) and set(SHIPPED) <= set(names)


def test_every_method_module_is_imported_by_the_package() -> None:
    # a new method is one file in camlens/methods: the package imports every module in it, so
    # its @register runs without an import line anywhere else
    import sys

    for name in MODULES:
        assert f"camlens.methods.{name}" in sys.modules


def test_the_exported_method_classes_are_registered() -> None:
    exported = {getattr(camlens.methods, n) for n in camlens.methods.__all__}
    registered = set(_REGISTRY.values())
    assert {c for c in exported if isinstance(c, type) and getattr(c, "name", "")} <= registered


@pytest.mark.parametrize("module_name", MODULES)
def test_doctests(module_name: str) -> None:
    module = importlib.import_module(f"camlens.methods.{module_name}")
    result = doctest.testmod(module)
    assert result.failed == 0
    # base.py holds the shared machinery only; every module defining a method has an example.
    if any(cls.__module__ == module.__name__ for cls in _REGISTRY.values()):
        assert result.attempted > 0
