"""camlens._torchfile against crafted files (issue 14): memory bounded by the file's own sizes,
and every failure its own error naming the file. The files are made in code
(tests/fuzz_models.py, ``pth_payloads``)."""

from __future__ import annotations

import struct
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from camlens._torchfile import TorchFileError, load

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_models import _state_dict, _storage, _tensor, _zip, pth_payloads  # noqa: E402


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    return pth_payloads(tmp_path_factory.mktemp("pth"))


def test_every_crafted_file_is_refused_with_its_own_error_or_loads_within_bounds(payloads):
    for name, path, expect in payloads:
        tracemalloc.start()  # numpy reports its buffers to tracemalloc
        try:
            if expect == "loads":
                load(path)
            else:
                with pytest.raises(TorchFileError) as info:
                    load(path)
                message = str(info.value)
                assert expect in message and str(path) in message, (name, message)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # none of these files is bigger than 1.2 MB: the budget is its 256 MiB floor (the reader's
        # own bookkeeping and a pickle's copy besides); before, they took up to 2 GiB
        assert peak < (256 + 16) << 20, (name, peak)


def test_the_budget_counts_the_file_size_and_can_be_raised(tmp_path):
    # a stride-0 tensor of 2**25 floats (128 MiB) on one stored float: within the 256 MiB floor
    path = tmp_path / "expanded.pth"
    _zip(path, _state_dict(w=_tensor(_storage("0", 1), 0, [1 << 25], [0])), {"0": struct.pack("<f", 2.5)})
    with pytest.raises(TorchFileError, match="may expand to"):
        load(path, max_bytes=64 << 20)
    w = load(path)["w"]
    assert w.shape == (1 << 25,) and w[0] == w[-1] == 2.5
    del w


def test_a_tensor_referenced_twice_is_one_array(tmp_path):
    # the same tensor under two names (tied weights) is one array, as it is one tensor in torch
    t = _tensor(_storage("0", 4), 0, [2, 2], [2, 1])
    pickled = b"\x80\x02]q\x00(" + t + b"q\x01h\x01e."
    path = tmp_path / "tied.pth"
    _zip(path, pickled, {"0": np.arange(4, dtype="<f4").tobytes()})
    a, b = load(path)
    assert a is b
    np.testing.assert_array_equal(a, [[0, 1], [2, 3]])
