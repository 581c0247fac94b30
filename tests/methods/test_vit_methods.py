"""Attention rollout, LeGrad and Finer-CAM on given arrays and tiny models, with hand-computed maps."""

from __future__ import annotations

import numpy as np
import pytest

import camlens
from camlens.targets import ClassScore, ContrastScore, RegressionScore

# ---------------------------------------------------------------------------- Finer-CAM


def test_contrast_score_picks_the_nearest_other_classes():
    z = np.array([[5.0, 4.0, 9.0, 5.5, 0.0], [1.0, 1.0, 3.0, 0.0, 2.0]], np.float32)
    t = ContrastScore(gamma=0.5, references=2)
    refs = t.reference_classes(z, np.array([0, 2]))
    # sample 0: |z - 5| = [inf, 1, 4, 0.5, 5] -> 3, 1; sample 1: |z - 3| = [2, 2, inf, 3, 1] -> 4, 0 (tie: lower)
    assert refs.tolist() == [[3, 1], [4, 0]]
    from camlens.adapters.arrays import NumpyOps

    s = t.score([z], ["out"], NumpyOps)  # index None: the top class (2 and 2)
    np.testing.assert_allclose(s, [9.0 - 0.5 * (5.5 + 5.0) / 2, 3.0 - 0.5 * (2.0 + 1.0) / 2])
    assert ContrastScore(references=9).reference_classes(z, np.array([0, 0])).shape == (2, 4)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        ContrastScore(gamma=-1)
    with pytest.raises(ValueError, match="references must be a positive integer"):
        camlens.methods.get_method("finercam").__class__(references=0)


def _keras_cnn():
    import keras

    inp = keras.Input((5, 5, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="conv",
                            kernel_initializer="zeros")(inp)
    out = keras.layers.Dense(6, activation="softmax", name="head", kernel_initializer="zeros")(
        keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(1)
    for w in model.weights:
        w.assign(rng.normal(0, 1, tuple(w.shape)).astype(np.float32))
    return model


def test_finercam_on_keras_is_gradcam_of_the_logit_contrast():
    """Conv -> GAP -> Dense(softmax): dS/dA is (W[:, c] - gamma mean_t W[:, d_t]) / 25 at every
    position, on the logits (the softmax is skipped)."""
    import keras

    model = _keras_cnn()
    x = np.random.default_rng(2).normal(size=(3, 5, 5, 2)).astype(np.float32)
    exp = camlens.explain(model, x, method="finercam", target=[1, 4, 0], layer="conv")
    acts = np.asarray(keras.ops.convert_to_numpy(keras.Model(model.inputs[0], model.get_layer("conv").output)(x)))
    kernel, bias = (np.asarray(keras.ops.convert_to_numpy(w)) for w in model.get_layer("head").weights)
    logits = acts.mean(axis=(1, 2)) @ kernel + bias
    for n, c in enumerate([1, 4, 0]):
        dist = np.abs(logits[n] - logits[n, c])
        dist[c] = np.inf
        refs = np.argsort(dist, kind="stable")[:3]
        w = (kernel[:, c] - 0.6 * kernel[:, refs].mean(axis=1)) / 25
        want = np.maximum(acts[n] @ w, 0)
        np.testing.assert_allclose(exp.raw_maps[0][n], want, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(exp.scores[n], logits[n, c] - 0.6 * logits[n, refs].mean(), rtol=1e-4)
    assert "closest classes" in exp.target
    same = camlens.explain(model, x, method=camlens.methods.get_method("finercam").__class__(gamma=0.0),
                           target=[1, 4, 0], layer="conv")
    logit = camlens.explain(model, x, method="gradcam", target=camlens.targets.Logit([1, 4, 0]), layer="conv")
    np.testing.assert_allclose(same.raw_maps[0], logit.raw_maps[0], rtol=1e-5, atol=1e-7)


def test_finercam_refuses_a_target_without_classes():
    model = _keras_cnn()
    x = np.zeros((1, 5, 5, 2), np.float32)
    with pytest.raises(ValueError, match="finercam contrasts one class.*method='gradcam'"):
        camlens.explain(model, x, method="finercam", target=RegressionScore(0), layer="conv")
    # a ClassScore with an output name keeps it
    assert camlens.methods.get_method("finercam").retarget(ClassScore(2, output="head")).output == "head"


# ---------------------------------------------------------------------------- attention rollout

from camlens.methods.attention import AttentionData, LeGrad, Rollout  # noqa: E402

# T = 5 tokens: a class token and 2x2 patches; two blocks of two heads, rows summing to 1
_R = np.random.default_rng(5)


def _softmax_rows(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


P1 = _softmax_rows(_R.normal(size=(2, 2, 5, 5)))
P2 = _softmax_rows(_R.normal(size=(2, 2, 5, 5)))


def test_rollout_is_the_product_of_the_residual_attention_by_hand():
    got = Rollout()(AttentionData([P1, P2]))
    for n in range(2):
        a1 = 0.5 * P1[n].mean(0) + 0.5 * np.eye(5)  # rows already sum to 1
        a2 = 0.5 * P2[n].mean(0) + 0.5 * np.eye(5)
        want = (a2 @ a1)[0, 1:].reshape(2, 2)
        np.testing.assert_allclose(got[n], want, rtol=1e-6)
    # max over heads: rows renormalised
    got_max = Rollout(head_fusion="max")(AttentionData([P1]))
    a = 0.5 * P1[1].max(0) + 0.5 * np.eye(5)
    np.testing.assert_allclose(got_max[1], (a / a.sum(1, keepdims=True))[0, 1:].reshape(2, 2), rtol=1e-6)


def test_rollout_discard_ratio_and_a_given_grid():
    # one head, T = 3 tokens written out: discarding the 4 smallest of 9 (never [0, 0])
    p = np.array([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.05, 0.15, 0.8]])[None, None]
    got = Rollout(discard_ratio=0.5)(AttentionData([p], token_grid=(1, 2)))
    kept = np.array([[0.1, 0.6, 0.3], [0.0, 0.0, 0.6], [0.0, 0.0, 0.8]])  # 0.05, 0.15, 0.2, 0.2 go
    a = 0.5 * kept + 0.5 * np.eye(3)
    a = a / a.sum(1, keepdims=True)
    np.testing.assert_allclose(got[0], a[0, 1:].reshape(1, 2), rtol=1e-6)
    # no class token (a square T): the mean of every row
    sq = _softmax_rows(_R.normal(size=(1, 1, 4, 4)))
    a = 0.5 * sq[0, 0] + 0.5 * np.eye(4)
    np.testing.assert_allclose(Rollout()(AttentionData([sq]))[0], a.mean(0).reshape(2, 2), rtol=1e-6)
    with pytest.raises(ValueError, match="discard_ratio must be a number in \\[0, 1\\)"):
        Rollout(discard_ratio=1.0)
    with pytest.raises(ValueError, match="head_fusion must be 'mean', 'max' or 'min'"):
        Rollout(head_fusion="sum")
    with pytest.raises(ValueError, match="every block must give"):
        Rollout()(AttentionData([P1, P1[:, :, :4, :4]]))


def test_legrad_by_hand():
    g1 = _R.normal(size=P1.shape)
    g2 = _R.normal(size=P2.shape)
    got = LeGrad()(AttentionData([P1, P2], [g1, g2]))
    want = (np.maximum(g1, 0).mean(axis=(1, 2)) + np.maximum(g2, 0).mean(axis=(1, 2))) / 2
    np.testing.assert_allclose(got, want[:, 1:].reshape(2, 2, 2), rtol=1e-6)
    last = LeGrad(blocks=-1)(AttentionData([P1, P2], [g1, g2]))
    np.testing.assert_allclose(last, np.maximum(g2, 0).mean(axis=(1, 2))[:, 1:].reshape(2, 2, 2), rtol=1e-6)
    with pytest.raises(ValueError, match="block 2 is out of range: the model ran 2"):
        LeGrad(blocks=[2])(AttentionData([P1, P2], [g1, g2]))
    with pytest.raises(ValueError, match="needs one attention gradient per block"):
        LeGrad()(AttentionData([P1, P2]))
    with pytest.raises(ValueError, match="blocks must be None"):
        LeGrad(blocks=[])


# ---------------------------------------------------------------------------- on real ViTs


#: native torch models do not depend on the Keras backend: checked in the torch run only
torch_run = pytest.mark.skipif(
    __import__("os").environ.get("KERAS_BACKEND", "tensorflow") != "torch",
    reason="native torch does not depend on the Keras backend: checked in the torch run",
)


@pytest.fixture(scope="module")
def timm_vit():
    timm = pytest.importorskip("timm")
    import torch

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_heads=2, embed_dim=16, num_classes=5).eval()


IMAGES = np.random.default_rng(3).random((3, 32, 32, 3)).astype(np.float32)


def _timm_attention_by_hand(vit, x):
    """Each block's probabilities softmax(q k^T / sqrt(d)) from its qkv weights and a hook on
    the block's input, and the model output: no camlens code."""
    import torch

    seen = []
    handles = [b.attn.register_forward_hook(lambda m, args, out: seen.append(args[0])) for b in vit.blocks]
    try:
        out = vit(torch.from_numpy(np.moveaxis(x, -1, 1).copy()))
    finally:
        for h in handles:
            h.remove()
    probs = []
    for blk, inp in zip(vit.blocks, seen):
        n, t, c = inp.shape
        qkv = blk.attn.qkv(inp).reshape(n, t, 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        probs.append((q @ k.transpose(-2, -1) * blk.attn.head_dim ** -0.5).softmax(-1))
    return probs, out


def _state(vit):
    return ([m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in vit.modules()),
            {k: v.clone() for k, v in vit.state_dict().items()})


@torch_run
def test_rollout_and_legrad_on_a_timm_vit_match_independent_numbers(timm_vit):
    import torch

    fused, hooks, weights = _state(timm_vit)
    exp = camlens.explain(timm_vit, IMAGES, method="rollout", target=2)
    with torch.no_grad():
        probs, _ = _timm_attention_by_hand(timm_vit, IMAGES)
    want = Rollout()(AttentionData([p.numpy() for p in probs]))
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-6)
    assert exp.maps[0].shape == (3, 32, 32) and exp.sites[0].layer == "blocks.0.attn .. blocks.1.attn"
    # LeGrad: gradients of the class-2 logit at the probabilities of a hand-made attention
    # (P + z, z = 0: dS/dz = dS/dP, with every later block's P still depending on it)
    zeros = [torch.zeros(3, 2, 17, 17, requires_grad=True) for _ in timm_vit.blocks]
    it = iter(zeros)
    leaves = []

    def forward_with(m, args, out):
        inp = args[0]
        n, t, c = inp.shape
        q, k, v = m.qkv(inp).reshape(n, t, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
        p = (q @ k.transpose(-2, -1) * m.head_dim ** -0.5).softmax(-1)
        leaves.append(p)
        return m.proj(((p + next(it)) @ v).transpose(1, 2).reshape(n, t, c))

    handles = [b.attn.register_forward_hook(forward_with) for b in timm_vit.blocks]
    try:
        logits = timm_vit(torch.from_numpy(np.moveaxis(IMAGES, -1, 1).copy()))
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(logits[:, 2].sum(), zeros)
    want = LeGrad()(AttentionData([p.detach().numpy() for p in leaves], [g.numpy() for g in grads]))
    got = camlens.explain(timm_vit, IMAGES, method="legrad", target=2)
    assert np.ptp(want) > 0
    np.testing.assert_allclose(got.raw_maps[0], want, rtol=1e-4, atol=1e-7)
    parts = camlens.explain(timm_vit, IMAGES, method="legrad", target=2, batch_size=2)  # runs of 2 + 1
    np.testing.assert_allclose(parts.raw_maps[0], got.raw_maps[0], rtol=1e-5, atol=1e-9)
    after = _state(timm_vit)
    assert after[:2] == (fused, hooks)
    assert all(torch.equal(weights[k], after[2][k]) for k in weights)


@torch_run
@pytest.mark.parametrize("method", ["rollout", "legrad"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_timm_vit_is_put_back_after_an_error(timm_vit, method, error):
    import torch

    fused, hooks, _ = _state(timm_vit)

    def bad(y):
        raise error("target")

    with pytest.raises(error, match="target"):
        camlens.explain(timm_vit, IMAGES, method=method, target=bad)
    assert _state(timm_vit)[:2] == (fused, hooks)
    assert torch.is_grad_enabled() and not any(m.training for m in timm_vit.modules())


@torch_run
def test_rollout_on_a_hugging_face_vit_equals_its_own_attentions():
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_hidden_layers=2, num_attention_heads=2,
                                 hidden_size=16, intermediate_size=32, num_labels=4)
    model = transformers.ViTForImageClassification(cfg).eval()
    before = model.config._attn_implementation
    x = IMAGES[:2, :16, :16]
    exp = camlens.explain(model, x, method="rollout", target=1)
    assert model.config._attn_implementation == before
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            own = model(torch.from_numpy(np.moveaxis(x, -1, 1).copy()), output_attentions=True).attentions
    finally:
        model.config._attn_implementation = before
    want = Rollout()(AttentionData([a.numpy() for a in own]))
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-6)
    assert np.isfinite(camlens.explain(model, x, method="legrad", target=1).raw_maps[0]).all()


def test_attention_methods_refuse_models_without_readable_attention():
    import torch

    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    cnn(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="Sequential has no attention module camlens can read.*'gradcam'"):
        camlens.explain(cnn, np.zeros((1, 8, 8, 3), np.float32), method="rollout")
    with pytest.raises(ValueError, match="has no attention camlens can read \\(keras.layers.MultiHeadAttention"):
        camlens.explain(_keras_cnn(), np.zeros((1, 5, 5, 2), np.float32), method="legrad")
    from camlens.adapters.arrays import FunctionModel

    with pytest.raises(ValueError, match="reads attention probabilities, which camlens reads from Keras"):
        camlens.explain(FunctionModel(lambda x: x.mean(axis=(1, 2)), (4, 4, 3)), np.zeros((1, 4, 4, 3), np.float32),
                        method="rollout")
    with pytest.raises(ValueError, match="uses no layer; drop layer='conv'"):
        camlens.explain(_keras_cnn(), np.zeros((1, 5, 5, 2), np.float32), method="rollout", layer="conv")


@torch_run
@pytest.mark.parametrize("method", ["rollout", "legrad"])
def test_sequence_first_multihead_attention_reads_as_batch_first(method):
    """nn.MultiheadAttention(batch_first=False) takes (T, N, C): the same weights give the same
    map as batch_first=True, and the caller still gets the head-averaged weights it asked for."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self, batch_first):
            super().__init__()
            torch.manual_seed(0)
            self.patch = torch.nn.Conv2d(3, 8, 4, stride=4)
            self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first)
            self.head = torch.nn.Linear(8, 3)
            self.batch_first = batch_first
            self.seen = None

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
            s = t if self.batch_first else t.transpose(0, 1)
            out, self.seen = self.attn(s, s, s)  # default: need_weights=True, averaged
            out = out if self.batch_first else out.transpose(0, 1)
            return self.head((t + out)[:, 0])

    x = IMAGES[:2, :16, :16]
    first, second = Net(True), Net(False)
    a = camlens.explain(first, x, method=method, target=1)
    b = camlens.explain(second, x, method=method, target=1)
    assert np.ptp(a.raw_maps[0]) > 0
    np.testing.assert_allclose(b.raw_maps[0], a.raw_maps[0], rtol=1e-4, atol=1e-7)
    assert second.seen.shape == (2, 17, 17)  # averaged over heads, as the module was asked
