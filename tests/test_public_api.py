"""The public facade: __all__ is complete and importing camlens pulls in no framework."""

import subprocess
import sys
import types

import camlens


def test_all_names_exist_and_public_members_are_listed():
    for name in camlens.__all__:
        assert hasattr(camlens, name), name
    public = {
        n for n, v in vars(camlens).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public <= set(camlens.__all__), public - set(camlens.__all__)


def test_import_is_light():
    code = "import sys, camlens; print(sorted(m for m in ('keras', 'tensorflow', 'torch', 'jax', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_imagenet_classes_and_top_k():
    import numpy as np

    from camlens.samples import imagenet_classes, top_k

    names = imagenet_classes()
    assert len(names) == 1000 and names[281] == "tabby" and names[967] == "espresso"
    logits = np.zeros(1000)
    logits[967], logits[504] = 5.0, 4.0
    best = top_k(logits, k=2)[0]
    assert [(i, n) for i, n, _ in best] == [(967, "espresso"), (504, "coffee mug")]
    e = np.exp([5.0, 4.0] + [0.0] * 998)
    assert abs(best[0][2] - e[0] / e.sum()) < 1e-12


def test_bundled_photos_load_offline():
    import pytest

    from camlens import samples

    pics = samples.photos(["chelsea", "coffee", "grace_hopper", "china"])
    assert pics["chelsea"].shape == (300, 451, 3) and pics["coffee"].shape == (400, 600, 3)
    assert all(p.dtype.name == "uint8" and p.ndim == 3 for p in pics.values())
    assert set(samples.PHOTOS) >= {"chelsea", "coffee", "astronaut", "rocket", "flower", "grace_hopper"}
    with pytest.raises(ValueError, match="no bundled photo 'dog'.*chelsea"):
        samples.photo("dog")


def test_warnings_point_at_the_callers_line():
    """A warning raised deep inside camlens names the user's line, not camlens' code."""
    import warnings

    import numpy as np

    torch = __import__("pytest").importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)  # the ReLU is off everywhere: a constant map, and a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        camlens.explain(model, np.ones((1, 3, 8, 8), np.float32), layer="1")
    assert caught, "expected the constant-map warning"
    assert all(w.filename == __file__ for w in caught), [(w.filename, str(w.message)[:60]) for w in caught]


def test_subpackages_the_readme_uses_are_reached_lazily_after_import_camlens():
    """`import camlens` then `camlens.models.efficientnet_lite0(...)`, `camlens.samples.photo`,
    `camlens.io.load_image`, `camlens.app.create_app`: each subpackage is there on first use,
    and `import camlens` alone still loads none of them (nor a framework)."""
    code = (
        "import sys, camlens\n"
        "lazy = ('camlens.models', 'camlens.samples', 'camlens.app')\n"
        "print(sorted(m for m in lazy if m in sys.modules))\n"
        "print(callable(camlens.models.efficientnet_lite0), callable(camlens.samples.photo),\n"
        "      callable(camlens.io.load_image), callable(camlens.files.explain_files))\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'torch', 'jax') if m in sys.modules))\n"
        "print(all(name in dir(camlens) for name in ('models', 'samples', 'io', 'app')))\n"
        "try:\n    camlens.nonexistent\nexcept AttributeError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "[]", "True True True True", "[]", "True", "module 'camlens' has no attribute 'nonexistent'"]
