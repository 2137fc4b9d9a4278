"""arkernels.decode_attention: the attention of a few new queries per batch row against that row's KV cache,
the rows holding different numbers of keys (continuous batching), with an optional mask over the newest keys
(tree verification in speculative decoding; a causal chunk; none for VAR's next-scale step).

Backends: "triton" runs ``arkernels::decode_attention_triton`` (triton_kernels/decode_attention.py: split-KV,
one pass over the cache) on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; "cpu" and "reference"
run the PyTorch definition (arkernels.reference.decode_attention: per batch row, O(Lq x seqlen) work per
head, as the kernel). Inference only: no backward (an input that requires grad under grad mode is refused).
The Triton op is a torch.library.triton_op, so it works under torch.compile(fullgraph=True).
Contract: docs/ops/decode_attention.md.
"""
from __future__ import annotations

import math

import torch

from arkernels.ops import _backends
from arkernels.ops._checks import check_attention_qkv, check_bool, check_same_device, check_scale, check_tensor
from arkernels.reference.decode_attention import decode_attention_ref

OP = "decode_attention_triton"
MAX_HEAD_DIM = 256
_INDEX_DTYPES = (torch.int32, torch.int64)


def decode_attention(q, k_cache, v_cache, seqlens, mask=None, scale=None, return_lse=False, *, num_splits=None,
                     backend="auto"):
    """Softmax attention of the new queries of every batch row against that row's cached keys.

    Args:
        q: (B, Hq, Lq, D), float16 / bfloat16 / float32: the queries of the Lq newest tokens of each row.
        k_cache, v_cache: (B, Hkv, S_max, D), q's dtype and device, Hq a multiple of Hkv (GQA). Row b holds
            seqlens[b] valid keys; the last Lq of them are the new tokens' (append them before the call).
            Any strides with a unit last stride (a slice of a larger cache is read in place).
        seqlens: (B,) int32 or int64 on q's device, Lq <= seqlens[b] <= S_max (checked when on the CPU; on
            CUDA the kernel reads at most S_max keys, and a row with fewer than Lq keys sees them all).
        mask: None (every key visible to every new query), or over the newest Lq keys: an (Lq, Lq) bool
            tensor (True = query i sees new key j) or an arkernels.masks.Mask of shape (Lq, Lq) such as
            masks.tree(parents) or masks.causal(Lq). Older keys are always visible.
        scale: softmax scale, default 1 / sqrt(D).
        return_lse: also return the log-sum-exp (natural log) of the visible scaled scores, float32.
        num_splits: key splits per (row, kv head) for the Triton kernel (default: enough programs for the GPU).
        backend: "auto" (triton on CUDA, cpu on CPU tensors), "triton", "cpu" or "reference".

    Returns:
        out (B, Hq, Lq, D) in q's dtype [, lse (B, Hq, Lq) float32]. A query that sees no key: out 0, lse -inf.
    """
    Lq, D = _validate(q, k_cache, v_cache, seqlens, scale, return_lse, num_splits)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    chosen = _backends.resolve_triton_or_torch_cpu("decode_attention", OP, backend, q.device)
    # The kernel reads the mask as int8 bytes: a Mask's are built once and cached by the Mask (no per-call work).
    new_mask = _new_mask(mask, Lq, q.device, torch.int8 if chosen == "triton" else torch.bool)
    if chosen == "triton":
        q, k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k_cache, v_cache))
        mask_i8 = None if new_mask is None else new_mask.contiguous()
        out, lse = torch.ops.arkernels.decode_attention_triton(q, k_cache, v_cache, seqlens, mask_i8, scale,
                                                               -1 if num_splits is None else int(num_splits))
    else:
        out, lse = decode_attention_ref(q, k_cache, v_cache, seqlens, new_mask, scale)
        lse = lse.to(torch.float32)
    return (out, lse) if return_lse else out


def _validate(q, k, v, seqlens, scale, return_lse, num_splits):
    B, Hq, Lq, D, Hkv, S_max = check_attention_qkv(q, k, v, k_name="k_cache", v_name="v_cache", s_name="S_max",
                                                   max_head_dim=MAX_HEAD_DIM)
    check_tensor("seqlens", seqlens, dtypes=_INDEX_DTYPES)
    if tuple(seqlens.shape) != (B,):
        raise ValueError(f"seqlens: expected shape ({B},) (one length per batch row), got {tuple(seqlens.shape)}")
    check_same_device("q", q, "seqlens", seqlens)
    if seqlens.device.type == "cpu" and B > 0:
        lo, hi = int(seqlens.min()), int(seqlens.max())
        if lo < Lq or hi > S_max:
            bad = lo if lo < Lq else hi
            raise ValueError(f"seqlens: expected values in [Lq, S_max] = [{Lq}, {S_max}] (the new tokens' keys are "
                             f"in the cache), got {bad}")
    check_scale("scale", scale)
    check_bool("return_lse", return_lse)
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits: expected None or an int >= 1, got {num_splits!r}")
    if torch.is_grad_enabled():
        for name, t in (("q", q), ("k_cache", k), ("v_cache", v)):
            if t.requires_grad:
                raise ValueError(f"{name}: requires grad, but decode_attention has no backward (inference only); "
                                 "call it under torch.no_grad() or torch.inference_mode(), or pass detached tensors")
    return Lq, D


def _new_mask(mask, Lq: int, device, dtype: torch.dtype) -> torch.Tensor | None:
    """The (Lq, Lq) mask over the newest keys on `device` as `dtype` (a Mask's cached by the Mask), or None."""
    if mask is None:
        return None
    from arkernels.masks import Mask

    if isinstance(mask, Mask):
        if (mask.L, mask.S) != (Lq, Lq):
            raise ValueError(f"mask: expected a mask over the newest keys, shape (Lq, Lq) = ({Lq}, {Lq}), got "
                             f"({mask.L}, {mask.S})")
        return mask.dense_on(device, dtype)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask: expected None, a bool tensor or an arkernels.masks.Mask, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if tuple(mask.shape) != (Lq, Lq):
        raise ValueError(f"mask: expected shape (Lq, Lq) = ({Lq}, {Lq}), got {tuple(mask.shape)}")
    return mask.to(device=device, dtype=dtype)


if _backends.triton_available():
    from arkernels.triton_kernels import decode_attention as _tk

    @torch.library.triton_op("arkernels::decode_attention_triton", mutates_args=())
    def _decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens: torch.Tensor,
                                 new_mask: torch.Tensor | None, scale: float,
                                 num_splits: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _tk.decode_attention_fwd(q, k_cache, v_cache, seqlens, new_mask, scale,
                                        None if num_splits < 0 else num_splits)
