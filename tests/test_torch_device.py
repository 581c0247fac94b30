"""camlens on a torch module and input on a CUDA device (issue 18, target 6): the module stays
there, the maps come back as numpy arrays, equal to the CPU's. The CUDA case is skipped without
a GPU; the same check on the CPU runs everywhere, so the test itself is exercised."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_a_module_and_input_on_a_device_give_the_cpu_maps(method, device):
    import camlens

    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32))
    reference = camlens.explain(_net(), x, method=method, layer="1", target=[0, 2])
    net = _net().to(device)
    result = camlens.explain(net, x.to(device), method=method, layer="1", target=[0, 2])
    assert next(net.parameters()).device.type == device  # the module is not moved
    assert all(isinstance(m, np.ndarray) for m in result.maps)
    for got, want in zip(result.maps, reference.maps):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
