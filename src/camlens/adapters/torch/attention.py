"""The attention probabilities of a torch vision transformer, for attention rollout and LeGrad.

Three kinds of attention module are read, each through a patch that is put back exactly:

- timm's ``Attention`` (ViT, DeiT, DINOv2...): it computes ``softmax(q k^T * scale)`` itself only
  when ``fused_attn`` is false (else ``scaled_dot_product_attention`` hides the probabilities),
  so ``fused_attn`` is set false on the instance and the output of its ``attn_drop`` (the
  probabilities that multiply ``v``; dropout is off in eval mode) is recorded.
- ``torch.nn.MultiheadAttention`` (torchvision's ViT): called with ``need_weights=True,
  average_attn_weights=False``; for gradients its output is recomputed from the recorded
  probabilities (``out_proj(P @ v)``), since the weights it returns are not the tensor its
  output was computed from. The caller gets what it asked for (no weights, or head-averaged).
- Hugging Face attention modules (``ViTAttention``...): the model's ``config._attn_implementation``
  is set to ``"eager"``, whose probabilities are the second value the module returns.
"""

from __future__ import annotations

from typing import Any

from ..._restore import Patch

__all__ = ["attention_modules", "record_attention", "SUPPORTED"]

SUPPORTED = ("timm Attention (ViT, DeiT, DINOv2...), torch.nn.MultiheadAttention (torchvision's "
             "VisionTransformer) and Hugging Face ViT attention")


def _kind(mod: Any) -> str | None:
    import torch

    if isinstance(mod, torch.nn.MultiheadAttention):
        return "mha"
    if (hasattr(mod, "fused_attn") and isinstance(getattr(mod, "attn_drop", None), torch.nn.Dropout)
            and hasattr(mod, "qkv") and hasattr(mod, "num_heads")):
        return "timm"
    config = getattr(mod, "config", None)
    if (type(mod).__name__.endswith("Attention") and config is not None
            and hasattr(config, "_attn_implementation") and hasattr(mod, "scaling")):
        return "hf"
    return None


def attention_modules(model: Any) -> list[tuple[str, Any, str]]:
    """``(path, module, kind)`` of every attention module camlens can read, in module order."""
    return [(path, m, kind) for path, m in model.named_modules() if (kind := _kind(m)) is not None]


class record_attention(Patch):
    """While the block runs, ``records`` gets each attention call's probabilities ``(N, heads,
    T, T)`` in the order the calls happen (tensors in the autograd graph where gradients are on:
    ``d score / d records[i]`` is the gradient with respect to the probabilities that weight
    the values)."""

    def __init__(self, found: list[tuple[str, Any, str]], need_gradients: bool) -> None:
        super().__init__()
        self.found = found
        self.need_gradients = need_gradients
        self.records: list[Any] = []
        self.paths: list[str] = []

    def apply(self) -> None:
        for path, mod, kind in self.found:
            getattr(self, f"_{kind}")(path, mod)

    def _keep(self, path: str, probs: Any) -> None:
        if probs is None or probs.ndim != 4:
            raise ValueError(
                f"attention {path!r} gave no (N, heads, tokens, tokens) probabilities; "
                f"camlens reads {SUPPORTED}"
            )
        self.records.append(probs)
        self.paths.append(path)

    def _timm(self, path: str, mod: Any) -> None:
        self.undo_with(lambda mod=mod, old=mod.fused_attn: setattr(mod, "fused_attn", old))
        mod.fused_attn = False
        hook = mod.attn_drop.register_forward_hook(lambda m, args, out, path=path: self._keep(path, out))
        self.undo_with(hook.remove)

    def _hf(self, path: str, mod: Any) -> None:
        config = mod.config
        old = config._attn_implementation
        if old != "eager":
            self.undo_with(lambda: setattr(config, "_attn_implementation", old))
            config._attn_implementation = "eager"
        hook = mod.register_forward_hook(lambda m, args, out, path=path: self._keep(path, out[1]))
        self.undo_with(hook.remove)

    def _mha(self, path: str, mod: Any) -> None:
        asked: list[tuple[bool, bool]] = []

        def pre(m: Any, args: tuple, kwargs: dict) -> tuple:
            args, kwargs = list(args), dict(kwargs)
            for pos, name, value in ((4, "need_weights", True), (6, "average_attn_weights", False)):
                if len(args) > pos:
                    asked.append(bool(args[pos]))
                    args[pos] = value
                else:
                    asked.append(bool(kwargs.get(name, True)))
                    kwargs[name] = value
            return tuple(args), kwargs

        def post(m: Any, args: tuple, kwargs: dict, out: Any) -> Any:
            averaged, requested = asked.pop(), asked.pop()
            probs = out[1]
            self._keep(path, probs)
            result = out[0]
            if self.need_gradients:
                result = _mha_replay(m, args, kwargs, probs, path)
            weights = (probs.mean(dim=1) if averaged else probs) if requested else None
            return result, weights

        self.undo_with(mod.register_forward_pre_hook(pre, with_kwargs=True).remove)
        self.undo_with(mod.register_forward_hook(post, with_kwargs=True).remove)


def _mha_replay(m: Any, args: tuple, kwargs: dict, probs: Any, path: str) -> Any:
    """``nn.MultiheadAttention``'s output computed from ``probs``: ``out_proj(P @ v)``."""
    import torch.nn.functional as F

    if m.bias_k is not None or m.add_zero_attn:
        raise ValueError(
            f"attention {path!r} adds key/value tokens (add_bias_kv or add_zero_attn): its "
            "probabilities are over more keys than tokens; gradient methods cannot read it"
        )
    value = args[2] if len(args) > 2 else kwargs["value"]
    if not m.batch_first:
        value = value.transpose(0, 1)
    n, s, e = value.shape
    heads = m.num_heads
    if m._qkv_same_embed_dim:
        w = m.in_proj_weight[2 * m.embed_dim:]
    else:
        w = m.v_proj_weight
    b = None if m.in_proj_bias is None else m.in_proj_bias[2 * m.embed_dim:]
    v = F.linear(value, w, b).reshape(n, s, heads, m.embed_dim // heads).transpose(1, 2)
    out = (probs @ v).transpose(1, 2).reshape(n, probs.shape[2], m.embed_dim)
    out = m.out_proj(out)
    return out if m.batch_first else out.transpose(0, 1)
