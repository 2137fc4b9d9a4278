"""arkernels.block_sparse_attention: softmax attention under a block-sparse mask (causal, sliding window,
VAR block-causal, ACDiT SCAM, documents, trees, any dense mask), forward and backward.

Backends: "triton" runs ``arkernels::block_sparse_attention_triton`` (triton_kernels/block_sparse_attention.py)
on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1); "cuda" runs ``arkernels::block_sparse_attention_fwd``
(csrc/torch/block_sparse_attention.cpp: the C API's Hopper kernel, wgmma + TMA) on CUDA tensors, with the
Triton backward on the same layout (both take the 128 x 128 layout a Mask gets on the GPU; "auto" takes it at
D 128, see _auto_takes_cuda); "cpu" runs ``arkernels::block_sparse_attention_cpu``, a PyTorch path over
query tiles that walks the same tile layout (never builds the L x S mask; fp32 math, a Python loop over query
tiles); "reference" the dense PyTorch definition (builds the (B, Hq, L, S) scores and the L x S mask). The ops
take the layout's tensors and ints (the public function unpacks the layout) and have autograd (and fake
kernels where torch needs them) registered here, so they work under torch.compile(fullgraph=True) and pass
torch.library.opcheck. Design and numerics: docs/ops/block_sparse_attention.md.
"""
from __future__ import annotations

import math

import torch

from arkernels import _library
from arkernels._outputs import new_output
from arkernels.masks.layout import FULL, RULE, LevelRule, TileLayout
from arkernels.masks.mask import Mask
from arkernels.ops import _backends
from arkernels.ops._checks import check_attention_qkv, check_bool, check_scale
from arkernels.reference.block_sparse_attention import block_sparse_attention_ref

OP = "block_sparse_attention_triton"
NATIVE_OP = "block_sparse_attention_fwd"  # the C++ op (C API: CPU kernel, Hopper CUDA kernel)
CUDA_HEAD_DIMS = (64, 128)  # what the Hopper kernel supports (also bf16 / fp16 only, sm_90 only)
CUDA_BLOCK_Q = 128  # the Hopper kernel's query tile; its key tile divides its 128-key chunk
MAX_HEAD_DIM = 256
CPU_TILING = (128, 128)  # the cpu backend's default layout tiling (it accepts a layout at any tiling)
_GRID_LIMIT = 65535  # heads and batch rows are grid dimensions 1 and 2 of the kernels
DKDV_OP = "block_sparse_attention_bwd_dkdv"  # the C++ op of the Hopper dK / dV kernel (C API, CUDA only)

# How the backward of either GPU forward (CUDA or Triton) runs where the Hopper dK / dV kernel (DKDV_OP) runs
# (sm_90, bf16 / fp16, D 64 / 128, a 128 x 128 layout). "fused" (default): that kernel for dQ, dK and dV, dQ summed
# by fp32 TMA reduce-adds (not bitwise deterministic; "dkdv" is taken instead while torch.use_deterministic_algorithms
# is on); "dkdv": that kernel for dK / dV, Triton for dQ (deterministic); "triton": the Triton backward. Elsewhere
# the Triton backward runs. Read when the backward runs (traced once under torch.compile). "fused" is the fastest
# on every benchmark mask through torch (H100, bench/NOTES.md session 9: causal fwd+bwd 2.29 ms with the CUDA
# forward vs 3.53 with the Triton backward, flex 2.75); the GPU tests and scripts/block_sparse_attention_sweep.py
# ("cuda dkdv", "cuda fused") set it.
CUDA_BACKWARD = "fused"
CUDA_BACKWARDS = ("triton", "dkdv", "fused")
# Eager backwards on real tensors call the Triton backward op's body directly, with wrap_triton's direct launches,
# instead of going through the custom op. Off until it is timed against the op in one run: VAR fwd+bwd is host-bound
# (1.29 ms of host time a call for 0.41 ms of kernels, H100) and cProfile put ~0.5 ms in the op's dispatch, but the
# first try (without wrap_triton's switch, so its launches took the slow HOP dispatch) gained nothing (bench/NOTES.md,
# session 14). scripts/profile_attention_step.py times both (provider "arkernels-cuda+direct").
DIRECT_EAGER_BACKWARD = False


def block_sparse_attention(q, k, v, mask, scale=None, return_lse=False, backend="auto"):
    """Softmax attention of q against k, v where `mask` allows it.

    Args:
        q: (B, Hq, L, D), float16 / bfloat16 / float32 (fp32 is computed with tf32 dots on the GPU).
        k, v: (B, Hkv, S, D), q's dtype and device; Hq a multiple of Hkv (grouped-query attention:
            q head h reads kv head h // (Hq / Hkv)).
        mask: an arkernels.masks.Mask of shape (L, S) (laid out at ``backend_tiling(backend, D, dtype,
            device)``: 128 x 128 on the GPU for D <= 128), or directly a masks.layout.TileLayout on q's
            device: the Triton kernels take any tiling of powers of two >= 16, the CUDA forward 128 query
            rows by 16, 32, 64 or 128 keys. True = the query may attend to the key; shared by every batch row
            and head.
        scale: softmax scale, default 1 / sqrt(D).
        return_lse: also return the log-sum-exp (natural log) of the scaled visible scores.
        backend: "auto" (on CUDA tensors: "cuda" at D 128 where it runs, else triton; cpu on CPU tensors, or
            triton there under TRITON_INTERPRET=1), "triton", "cuda", "cpu" or "reference".
            "cuda" is the Hopper CUDA forward (sm_90 GPU, bfloat16 / float16, D 64 or 128; anything else
            raises ValueError) with the Triton backward on its layout.

    Returns:
        out (B, Hq, L, D) in q's dtype [, lse (B, Hq, L) float32]. A query that sees no key gets
        out = 0, lse = -inf and zero gradients. Gradients flow to q, k, v (also through lse).
    """
    B, Hq, L, D, Hkv, S = _validate(q, k, v, mask, scale, return_lse, backend)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if backend == "cuda":
        reason = _cuda_unavailable_reason(D, q.dtype, q.device)
        if reason is not None:
            raise ValueError(f"backend: 'cuda' cannot run here: {reason}")
        chosen = "cuda"
    else:
        chosen = _backends.resolve_triton_or_torch_cpu("block_sparse_attention", OP, backend, q.device)
        if backend == "auto" and chosen == "triton" and _auto_takes_cuda(q, mask, D):
            chosen = "cuda"
    if chosen == "reference":
        out, lse = block_sparse_attention_ref(q, k, v, _dense(mask, L, S, q.device), scale)
        lse = lse.to(torch.float32)
        return (out, lse) if return_lse else out
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if chosen == "cpu":
        lay = _layout(mask, CPU_TILING, q.device, lambda bq, bk: True, "any")
        out, lse = torch.ops.arkernels.block_sparse_attention_cpu(q, k, v, *_layout_args(lay), scale)
    elif chosen == "cuda":
        # Its backward is the Triton one on this same layout.
        lay = _layout(mask, cuda_tiling(D, q.dtype, q.device), q.device, _cuda_takes_tiling, CUDA_TILINGS_TEXT)
        out, lse = torch.ops.arkernels.block_sparse_attention_fwd(q, k, v, *_layout_args(lay), scale)
    else:
        from arkernels.triton_kernels.block_sparse_attention import TILINGS_TEXT

        lay = _layout(mask, tiling(D, q.dtype, q.device), q.device, _triton_takes_tiling, TILINGS_TEXT)
        out, lse = torch.ops.arkernels.block_sparse_attention_triton(q, k, v, *_layout_args(lay), scale)
    return (out, lse) if return_lse else out


def _auto_takes_cuda(q, mask, D: int) -> bool:
    """Whether "auto" runs the Hopper CUDA forward: at D 128, where it was the fastest forward on every
    benchmark mask (H200: causal 0.60 ms vs 0.88 for the best Triton, SCAM 0.51 vs 0.85, sliding window 0.43
    vs 0.47), with or without a backward (the Triton backward runs on the same layout either way); at D 64
    the Triton forward was faster (VAR 0.147 vs 0.193 ms). A TileLayout must also be at a tiling it takes."""
    if D != 128 or q.device.type != "cuda" or _cuda_unavailable_reason(D, q.dtype, q.device) is not None:
        return False
    return not isinstance(mask, TileLayout) or _cuda_takes_tiling(mask.block_q, mask.block_k)


def tiling(D: int, dtype: torch.dtype, device) -> tuple[int, int]:
    """(block_q, block_k) at which backend "triton" lays out a Mask for head dim D (128 x 128 on the GPU at
    D <= 128; the kernels cut it into their own slices). A TileLayout passed as `mask` may have any tiling of
    powers of two >= 16."""
    from arkernels.triton_kernels.block_sparse_attention import config

    cfg = config(D, dtype, torch.device(device))
    return cfg["BLOCK_M"], cfg["BLOCK_N"]


def backend_tiling(backend: str, D: int, dtype: torch.dtype, device) -> tuple[int, int]:
    """The tiling at which backend "cpu", "cuda" or "triton" lays out a Mask (to build it ahead of a call)."""
    if backend == "cpu":
        return CPU_TILING
    return cuda_tiling(D, dtype, device) if backend == "cuda" else tiling(D, dtype, device)


def cuda_tiling(D: int, dtype: torch.dtype, device) -> tuple[int, int]:
    """(block_q, block_k) at which backend "cuda" lays out a Mask (D 64 / 128 on CUDA devices): the Triton
    tiling, which the CUDA forward takes; its Triton backward runs on the same layout."""
    if torch.device(device).type != "cuda" or D not in CUDA_HEAD_DIMS:
        raise ValueError(f"the CUDA forward has no tiling for D = {D} on {device} (D 64 or 128 on a CUDA device)")
    block_q, block_k = tiling(D, dtype, device)
    assert _cuda_takes_tiling(block_q, block_k), (block_q, block_k)
    return block_q, block_k


def _triton_takes_tiling(block_q: int, block_k: int) -> bool:
    from arkernels.triton_kernels.block_sparse_attention import takes_tiling

    return takes_tiling(block_q, block_k)


def _cuda_takes_tiling(block_q: int, block_k: int) -> bool:
    """The CUDA forward's query tile, a key tile dividing its 128-key chunk, and one its Triton backward takes."""
    return block_q == CUDA_BLOCK_Q and 128 % block_k == 0 and _triton_takes_tiling(block_q, block_k)


CUDA_TILINGS_TEXT = "block_q 128 and block_k 16, 32, 64 or 128"


# ---- validation and backend choice ----

def _validate(q, k, v, mask, scale, return_lse, backend):
    B, Hq, L, D, Hkv, S = check_attention_qkv(q, k, v, max_head_dim=MAX_HEAD_DIM)
    if Hq > _GRID_LIMIT or B > _GRID_LIMIT:
        raise ValueError(f"q: expected at most {_GRID_LIMIT} heads and batch rows, got B = {B}, Hq = {Hq}")
    check_scale("scale", scale)
    check_bool("return_lse", return_lse)
    if isinstance(mask, (Mask, TileLayout)):
        mL, mS = mask.L, mask.S
    else:
        raise TypeError(f"mask: expected an arkernels.masks.Mask or a TileLayout, got {type(mask).__name__}")
    if (mL, mS) != (L, S):
        raise ValueError(f"mask: expected shape (L, S) = ({L}, {S}) from q and k, got ({mL}, {mS})")
    return B, Hq, L, D, Hkv, S


def _native_available() -> bool:
    """arkernels._C is loaded and has the C++ op (a build older than the op lacks it)."""
    return _library.native_available() and hasattr(torch.ops.arkernels, NATIVE_OP)


_cuda_reasons: dict = {}


# Constant under torch.compile (decided once while tracing, from the build, the device and the shape class).
@torch.compiler.assume_constant_result
def _cuda_unavailable_reason(D: int, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why backend "cuda" cannot run head dim D in `dtype` on `device`, or None when it can (cached: the
    device and dispatcher queries cost tens of microseconds per call otherwise)."""
    key = (D, dtype, device)
    if key not in _cuda_reasons:
        _cuda_reasons[key] = _cuda_reason_uncached(D, dtype, device)
    return _cuda_reasons[key]


def _cuda_reason_uncached(D: int, dtype: torch.dtype, device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"the cuda backend needs CUDA tensors, got tensors on {device}"
    if not _native_available() or not _library.has_kernel(NATIVE_OP, "CUDA"):
        return ("this build of arkernels has no CUDA kernel of block_sparse_attention (built without nvcc, against "
                "a CPU-only torch, or before the op existed)")
    if not _backends.triton_available():
        return "its backward is the Triton kernel, and triton is not installed"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"the CUDA kernel takes bfloat16 or float16, got {str(dtype).replace('torch.', '')} (use 'triton')"
    if D not in CUDA_HEAD_DIMS:
        return f"the CUDA kernel takes head dim D = 64 or 128, got D = {D} (use 'triton')"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        return (f"the CUDA kernel needs a Hopper GPU (sm_90: wgmma, TMA), got sm_{major}{minor} "
                f"({torch.cuda.get_device_name(device)}) (use 'triton')")
    block_q, block_k = cuda_tiling(D, dtype, device)
    # The default tiling stands for every tiling the CUDA forward takes: the kernel's instances differ by D and
    # dtype only (its key tile is a runtime value).
    if not torch.ops.arkernels.block_sparse_attention_cuda_supported(D, block_q, block_k, dtype, device):
        return (f"the CUDA kernel does not run D = {D}, {str(dtype).replace('torch.', '')}, tiling {block_q} x "
                f"{block_k} on {device} (libarkernels built without sm_90a?) (use 'triton')")
    return None


_dkdv_runs: dict = {}


@torch.compiler.assume_constant_result
def _dkdv_cuda_runs(D: int, block_q: int, block_k: int, dtype: torch.dtype, device: torch.device) -> bool:
    """The Hopper dK / dV kernel runs this case (cached, as _cuda_unavailable_reason)."""
    # int(): under make_fx's dynamic-shape tracing of the backward (opcheck's aot_dispatch_dynamic), D comes as a
    # SymInt, which cannot be hashed; the kernel choice specialises on the head dim anyway.
    D = int(D)
    key = (D, block_q, block_k, dtype, device)
    if key not in _dkdv_runs:
        _dkdv_runs[key] = (_native_available() and hasattr(torch.ops.arkernels, DKDV_OP)
                           and _library.has_kernel(DKDV_OP, "CUDA")
                           and torch.ops.arkernels.block_sparse_attention_dkdv_cuda_supported(D, block_q, block_k,
                                                                                               dtype, device))
    return _dkdv_runs[key]


def _layout(mask, default: tuple[int, int], device: torch.device, takes, takes_text: str) -> TileLayout:
    """A Mask's layout at `default`, or a TileLayout whose tiling the backend takes (takes(block_q, block_k))."""
    if isinstance(mask, TileLayout):
        lay = mask
        # The kernels trust a layout's indices (checking them per call would need device syncs): a layout
        # built by hand is validated once, eagerly (ValueError), and marked; Mask.layout()'s are built valid.
        if not lay.stats.get("validated") and not torch.compiler.is_compiling():
            lay.validate()
            lay.stats["validated"] = True
        if not takes(lay.block_q, lay.block_k):
            raise ValueError(f"mask: expected a TileLayout at a tiling (block_q, block_k) of {takes_text} for this "
                             f"backend, got ({lay.block_q}, {lay.block_k}); pass the Mask itself to let the op "
                             f"build it (at {default})")
    else:
        lay = mask.layout(*default, device)
    if lay.q_runs.device != device:
        raise ValueError(f"mask: expected a layout on {device} like q, got one on {lay.q_runs.device} "
                         "(use layout.to(device) once, outside the step)")
    return lay


def _dense(mask, L: int, S: int, device) -> torch.Tensor:
    """The (L, S) bool mask (reference backend only)."""
    if L == 0 or S == 0:
        return torch.zeros(L, S, dtype=torch.bool, device=device)
    return mask.to_dense().to(device)


def _layout_args(lay: TileLayout) -> tuple:
    r = lay.rule
    if r is None:
        rule = (None,) * 6
        window = -1
    else:
        rule = (r.q_level, r.k_level, r.q_doc, r.k_doc, r.q_group, r.k_group)
        window = -1 if r.window is None else int(r.window)
    return (lay.q_run_ptr, lay.q_runs, lay.k_run_ptr, lay.k_runs, lay.tile_bits, lay.k_tile_bits, *rule, window,
            lay.block_q, lay.block_k)


# ---- autograd, shared by both ops (a triton_op needs no fake kernel: it is traced with fake tensors) ----

_N_LAYOUT_TENSORS = 12  # q_run_ptr, q_runs, k_run_ptr, k_runs, tile_bits, k_tile_bits, 6 rule vectors


def _setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    layout_tensors = inputs[3:3 + _N_LAYOUT_TENSORS]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *layout_tensors)
    ctx.ints = inputs[3 + _N_LAYOUT_TENSORS:]  # window, block_q, block_k, scale
    # An unused lse (the common case) reaches the backward as None, not as zeros.
    ctx.set_materialize_grads(False)


def _make_backward(backward_op):
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, *layout_tensors = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_out = grad_out.to(out.dtype)
        if grad_out.stride(-1) != 1:
            grad_out = grad_out.contiguous()
        if grad_lse is not None:
            grad_lse = grad_lse.to(torch.float32).contiguous()
        dq, dk, dv = backward_op(grad_out, grad_lse, q, k, v, out, lse, *layout_tensors, *ctx.ints)
        return (dq, dk, dv) + (None,) * (_N_LAYOUT_TENSORS + 4)

    return backward


def _gpu_backward_op(*args):
    """The backward of either GPU forward (Triton or CUDA; Triton under the interpreter too): the Triton backward,
    with its dK / dV (and, fused, dQ) kernels replaced by the Hopper kernel where CUDA_BACKWARD asks for it and
    that kernel runs the case."""
    mode = _cuda_backward_mode()
    q, block_q, block_k = args[2], args[-3], args[-2]  # (grad_out, grad_lse, q, ..., window, block_q, block_k, scale)
    if mode != "triton" and not (q.is_cuda and _dkdv_cuda_runs(q.shape[-1], block_q, block_k, q.dtype, q.device)):
        mode = "triton"
    if DIRECT_EAGER_BACKWARD and not _traced(q):
        from torch._library.triton import set_wrap_triton_enabled

        with set_wrap_triton_enabled(False):  # as the triton_op's own backend does: launch, no HOP dispatch
            return _triton_backward(*args, mode)
    return torch.ops.arkernels._block_sparse_attention_triton_backward(*args, mode)


def _traced(t: torch.Tensor) -> bool:
    """Whether this call is being traced (torch.compile, make_fx, fake or functional tensors, a dispatch mode)
    rather than run eagerly on real tensors."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return torch.compiler.is_compiling() or type(t) is not torch.Tensor or _get_current_dispatch_mode() is not None


def _cuda_backward_mode():
    """CUDA_BACKWARD, checked; "fused" becomes "dkdv" while torch's deterministic algorithms are on (the fused dQ
    is summed by reductions in no fixed order; "dkdv" leaves dQ to the deterministic Triton kernel)."""
    if CUDA_BACKWARD not in CUDA_BACKWARDS:
        raise ValueError(f"CUDA_BACKWARD: expected one of {CUDA_BACKWARDS}, got {CUDA_BACKWARD!r}")
    if CUDA_BACKWARD == "fused" and torch.are_deterministic_algorithms_enabled():
        return "dkdv"
    return CUDA_BACKWARD


# ---- the cpu op: PyTorch over query tiles, walking the layout ----

def _query_tiles(L, S, block_q, block_k, q_run_ptr, q_runs, tile_bits, rule):
    """Per query tile: (first row, end row, visited key columns (int64) or None, their (rows, cols) visibility
    or None when every visited tile is FULL). Only the visited tiles are expanded: O(L x visible keys)."""
    from arkernels.masks.bits import unpack

    ptr, runs = q_run_ptr.tolist(), q_runs.tolist()
    for i in range(len(ptr) - 1):
        r0, r1 = i * block_q, min(L, (i + 1) * block_q)
        segs = runs[ptr[i]:ptr[i + 1]]
        if not segs:
            yield r0, r1, None, None
            continue
        rows = torch.arange(r0, r1)
        cols, parts, partial = [], [], False
        for start, end, kind, bits in segs:
            c = torch.arange(start * block_k, min(S, end * block_k))
            cols.append(c)
            if kind == FULL:
                parts.append(torch.ones(r1 - r0, c.numel(), dtype=torch.bool))
            elif kind == RULE:
                parts.append(rule.allowed(rows[:, None], c[None, :]))
                partial = True
            else:
                words = tile_bits[bits:bits + end - start]  # (tiles, block_q, words)
                vis = unpack(words, block_k)[:, :r1 - r0]    # (tiles, rows, block_k)
                parts.append(vis.permute(1, 0, 2).reshape(r1 - r0, -1)[:, :c.numel()])
                partial = True
        yield r0, r1, torch.cat(cols), (torch.cat(parts, dim=1) if partial else None)


def _cpu_rule(q_level, k_level, q_doc, k_doc, q_group, k_group, window):
    if q_level is None:
        return None
    return LevelRule(q_level, k_level, None if window < 0 else window, q_doc, k_doc, q_group, k_group)


def _cpu_scores(q, k, r0, r1, cols, vis, scale):
    """Scaled fp32 scores (B, Hkv, G, rows, cols) of query rows [r0, r1) against key columns `cols`."""
    B, Hq, _, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    n = r1 - r0
    qt = q[:, :, r0:r1].float().reshape(B, Hkv, G * n, D)
    ks = k.index_select(2, cols).float()
    s = torch.matmul(qt, ks.transpose(-1, -2)).mul_(scale).view(B, Hkv, G, n, cols.numel())
    if vis is not None:
        s.masked_fill_(~vis, float("-inf"))
    return qt, ks, s


def _cpu_forward(q, k, v, q_run_ptr, q_runs, k_run_ptr, k_runs, tile_bits, k_tile_bits, q_level, k_level, q_doc,
                 k_doc, q_group, k_group, window, block_q, block_k, scale):
    B, Hq, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    out = new_output((B, Hq, L, D), dtype=q.dtype, device=q.device)
    lse = new_output((B, Hq, L), dtype=torch.float32, device=q.device)
    rule = _cpu_rule(q_level, k_level, q_doc, k_doc, q_group, k_group, window)
    for r0, r1, cols, vis in _query_tiles(L, S, block_q, block_k, q_run_ptr, q_runs, tile_bits, rule):
        n = r1 - r0
        if cols is None:
            out[:, :, r0:r1] = 0
            lse[:, :, r0:r1] = float("-inf")
            continue
        _, _, s = _cpu_scores(q, k, r0, r1, cols, vis, scale)
        m = s.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isinf(m), 0.0, m)  # empty rows: exp(-inf - 0) = 0, no NaN
        p = torch.exp(s - m)
        l = p.sum(dim=-1, keepdim=True)
        seen = l > 0
        vs = v.index_select(2, cols).float()
        o = torch.matmul(p.view(B, Hkv, G * n, -1), vs).view(B, Hkv, G, n, D) / torch.where(seen, l, 1.0)
        out[:, :, r0:r1] = o.reshape(B, Hq, n, D).to(q.dtype)
        lse[:, :, r0:r1] = torch.where(seen, m + torch.log(torch.where(seen, l, 1.0)), float("-inf")).reshape(B, Hq, n)
    return out, lse


def _cpu_backward(grad_out, grad_lse, q, k, v, out, lse, q_run_ptr, q_runs, k_run_ptr, k_runs, tile_bits, k_tile_bits,
                  q_level, k_level, q_doc, k_doc, q_group, k_group, window, block_q, block_k, scale):
    B, Hq, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    dq = new_output(q.shape, dtype=q.dtype, device=q.device)
    dk32 = torch.zeros((B, Hkv, S, D), dtype=torch.float32, device=q.device)
    dv32 = torch.zeros((B, Hkv, S, D), dtype=torch.float32, device=q.device)
    delta = (grad_out.float() * out.float()).sum(-1)
    if grad_lse is not None:
        delta = delta - grad_lse  # d lse / d s = p: the lse gradient folds into delta
    # Empty rows (lse = -inf) use +inf: p = exp(s - inf) = 0.
    lse_use = torch.where(torch.isneginf(lse), float("inf"), lse)
    rule = _cpu_rule(q_level, k_level, q_doc, k_doc, q_group, k_group, window)
    for r0, r1, cols, vis in _query_tiles(L, S, block_q, block_k, q_run_ptr, q_runs, tile_bits, rule):
        n = r1 - r0
        if cols is None:
            dq[:, :, r0:r1] = 0
            continue
        qt, ks, s = _cpu_scores(q, k, r0, r1, cols, vis, scale)
        p = torch.exp(s - lse_use[:, :, r0:r1].reshape(B, Hkv, G, n, 1)).view(B, Hkv, G * n, -1)
        do = grad_out[:, :, r0:r1].float().reshape(B, Hkv, G * n, D)
        vs = v.index_select(2, cols).float()
        dv32.index_add_(2, cols, torch.matmul(p.transpose(-1, -2), do))
        ds = p * (torch.matmul(do, vs.transpose(-1, -2)) - delta[:, :, r0:r1].reshape(B, Hkv, G * n, 1))
        dq[:, :, r0:r1] = (torch.matmul(ds, ks) * scale).reshape(B, Hq, n, D).to(q.dtype)
        dk32.index_add_(2, cols, torch.matmul(ds.transpose(-1, -2), qt) * scale)
    return dq, dk32.to(k.dtype), dv32.to(v.dtype)


@torch.library.custom_op("arkernels::block_sparse_attention_cpu", mutates_args=())
def _block_sparse_attention_cpu(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_run_ptr: torch.Tensor, q_runs: torch.Tensor,
        k_run_ptr: torch.Tensor, k_runs: torch.Tensor, tile_bits: torch.Tensor | None,
        k_tile_bits: torch.Tensor | None, q_level: torch.Tensor | None, k_level: torch.Tensor | None,
        q_doc: torch.Tensor | None, k_doc: torch.Tensor | None, q_group: torch.Tensor | None,
        k_group: torch.Tensor | None, window: int, block_q: int, block_k: int,
        scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _cpu_forward(q, k, v, q_run_ptr, q_runs, k_run_ptr, k_runs, tile_bits, k_tile_bits, q_level, k_level,
                        q_doc, k_doc, q_group, k_group, window, block_q, block_k, scale)


@torch.library.custom_op("arkernels::_block_sparse_attention_cpu_backward", mutates_args=())
def _block_sparse_attention_cpu_backward(
        grad_out: torch.Tensor, grad_lse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
        v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, q_run_ptr: torch.Tensor, q_runs: torch.Tensor,
        k_run_ptr: torch.Tensor, k_runs: torch.Tensor, tile_bits: torch.Tensor | None,
        k_tile_bits: torch.Tensor | None, q_level: torch.Tensor | None, k_level: torch.Tensor | None,
        q_doc: torch.Tensor | None, k_doc: torch.Tensor | None, q_group: torch.Tensor | None,
        k_group: torch.Tensor | None, window: int, block_q: int, block_k: int,
        scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _cpu_backward(grad_out, grad_lse, q, k, v, out, lse, q_run_ptr, q_runs, k_run_ptr, k_runs, tile_bits,
                         k_tile_bits, q_level, k_level, q_doc, k_doc, q_group, k_group, window, block_q, block_k,
                         scale)


@_block_sparse_attention_cpu.register_fake
def _(q, k, v, *layout_and_scale):
    B, Hq, L, D = q.shape
    return q.new_empty((B, Hq, L, D)), q.new_empty((B, Hq, L), dtype=torch.float32)


@_block_sparse_attention_cpu_backward.register_fake
def _(grad_out, grad_lse, q, k, v, out, lse, *layout_and_scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


torch.library.register_autograd(
    "arkernels::block_sparse_attention_cpu",
    _make_backward(lambda *args: torch.ops.arkernels._block_sparse_attention_cpu_backward(*args)),
    setup_context=_setup_context)


# ---- the native op (C++ through the C API: the CPU kernel, the Hopper CUDA kernel); forward only ----

if _native_available():
    @torch.library.register_fake(f"arkernels::{NATIVE_OP}")
    def _(q, k, v, *layout_and_scale):
        B, Hq, L, D = q.shape
        return q.new_empty((B, Hq, L, D)), q.new_empty((B, Hq, L), dtype=torch.float32)

    if hasattr(torch.ops.arkernels, DKDV_OP):  # a build older than the op lacks it
        @torch.library.register_fake(f"arkernels::{DKDV_OP}")
        def _(q, k, v, dout, lse, delta, *layout_scale_with_dq):
            dq_shape = q.shape if layout_scale_with_dq[-1] else (0,)
            return k.new_empty(k.shape), v.new_empty(v.shape), q.new_empty(dq_shape, dtype=torch.float32)

    def _native_backward_op(*args):
        """The backward of the native forward on the same layout: the GPU backward on CUDA tensors, the cpu op's
        on CPU."""
        if not args[2].is_cuda:  # grad_out, grad_lse, q, ...
            return torch.ops.arkernels._block_sparse_attention_cpu_backward(*args)
        return _gpu_backward_op(*args)

    torch.library.register_autograd(f"arkernels::{NATIVE_OP}", _make_backward(_native_backward_op),
                                    setup_context=_setup_context)


# ---- the Triton op ----

if _backends.triton_available():
    from arkernels.triton_kernels import block_sparse_attention as _tk

    @torch.library.triton_op("arkernels::block_sparse_attention_triton", mutates_args=())
    def _block_sparse_attention_triton(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_run_ptr: torch.Tensor, q_runs: torch.Tensor,
            k_run_ptr: torch.Tensor, k_runs: torch.Tensor, tile_bits: torch.Tensor | None,
            k_tile_bits: torch.Tensor | None, q_level: torch.Tensor | None, k_level: torch.Tensor | None,
            q_doc: torch.Tensor | None, k_doc: torch.Tensor | None, q_group: torch.Tensor | None,
            k_group: torch.Tensor | None, window: int, block_q: int, block_k: int,
            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        lay = _tk.LayoutArgs(q_run_ptr, q_runs, k_run_ptr, k_runs, tile_bits, k_tile_bits, q_level, k_level, q_doc,
                             k_doc, q_group, k_group, window, block_q, block_k)
        return _tk.block_sparse_attention_fwd(q, k, v, lay, scale)

    @torch.library.triton_op("arkernels::_block_sparse_attention_triton_backward", mutates_args=())
    def _block_sparse_attention_triton_backward(
            grad_out: torch.Tensor, grad_lse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
            v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, q_run_ptr: torch.Tensor, q_runs: torch.Tensor,
            k_run_ptr: torch.Tensor, k_runs: torch.Tensor, tile_bits: torch.Tensor | None,
            k_tile_bits: torch.Tensor | None, q_level: torch.Tensor | None, k_level: torch.Tensor | None,
            q_doc: torch.Tensor | None, k_doc: torch.Tensor | None, q_group: torch.Tensor | None,
            k_group: torch.Tensor | None, window: int, block_q: int, block_k: int,
            scale: float, kernel: str = "triton") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The Triton backward; kernel "dkdv" / "fused" (CUDA_BACKWARD) replaces its dK / dV kernel (and, fused,
        its dQ kernel) by the Hopper kernel (DKDV_OP)."""
        return _triton_backward(grad_out, grad_lse, q, k, v, out, lse, q_run_ptr, q_runs, k_run_ptr, k_runs,
                                tile_bits, k_tile_bits, q_level, k_level, q_doc, k_doc, q_group, k_group, window,
                                block_q, block_k, scale, kernel)

    def _triton_backward(grad_out, grad_lse, q, k, v, out, lse, q_run_ptr, q_runs, k_run_ptr, k_runs, tile_bits,
                         k_tile_bits, q_level, k_level, q_doc, k_doc, q_group, k_group, window, block_q, block_k,
                         scale, kernel):
        """The body of _block_sparse_attention_triton_backward (DIRECT_EAGER_BACKWARD calls it directly)."""
        layout = (q_run_ptr, q_runs, k_run_ptr, k_runs, tile_bits, k_tile_bits, q_level, k_level, q_doc, k_doc,
                  q_group, k_group, window, block_q, block_k)
        lay = _tk.LayoutArgs(*layout)
        if kernel == "triton":
            return _tk.block_sparse_attention_bwd(grad_out, grad_lse, q, k, v, out, lse, lay, scale)
        fused_dq = kernel == "fused"

        def dkdv(q, k, v, grad_out, lse, delta):
            dk, dv, dq = torch.ops.arkernels.block_sparse_attention_bwd_dkdv(q, k, v, grad_out, lse, delta, *layout,
                                                                              scale, fused_dq)
            return dk, dv, dq.to(q.dtype) if fused_dq else None

        return _tk.block_sparse_attention_bwd(grad_out, grad_lse, q, k, v, out, lse, lay, scale, dkdv=dkdv)

    torch.library.register_autograd("arkernels::block_sparse_attention_triton", _make_backward(_gpu_backward_op),
                                    setup_context=_setup_context)
