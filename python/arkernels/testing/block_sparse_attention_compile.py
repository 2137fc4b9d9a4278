"""block_sparse_attention's Triton kernels compiled for sm_90a without a GPU, at a given configuration (the
tests' compile check and scripts/block_sparse_attention_resources.py, which picks backward shapes by their
registers and spills before a GPU times them)."""
from __future__ import annotations

import torch

KERNELS = ("fwd", "preprocess", "dkdv", "dq")
_FUNCTIONS = {"fwd": "_block_sparse_attention_fwd_kernel", "preprocess": "_block_sparse_attention_bwd_preprocess_kernel",
              "dkdv": "_block_sparse_attention_bwd_dkdv_kernel", "dq": "_block_sparse_attention_bwd_dq_kernel"}
_ELEMENT = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
_DATA = ("p_q", "p_k", "p_v", "p_o", "p_do", "p_dq", "p_dk", "p_dv")


def compile_kernel(kernel: str, D: int, dtype: torch.dtype, cfg: dict | None = None, rule_flags: dict | None = None):
    """triton.compile of one kernel ("fwd", "preprocess", "dkdv" or "dq") at `cfg` (default: config(D, dtype,
    "cuda")) with every rule flag on (the largest variant) unless `rule_flags` sets some (HAS_RULE, ...)."""
    import triton

    from arkernels.testing.triton_compile import compile_for_sm90
    from arkernels.triton_kernels import block_sparse_attention as tk

    cfg = tk.config(D, dtype, "cuda") if cfg is None else cfg
    block_d = max(16, triton.next_power_of_2(D))
    consts = dict(HAS_RULE=True, HAS_WINDOW=True, HAS_DOC=True, HAS_GROUP=True, N_WORDS=-(-cfg["BLOCK_N"] // 32),
                  BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=block_d, EVEN_D=block_d == D, PREC="tf32")
    consts.update(rule_flags or {})
    warps, stages = 4, 1
    if kernel == "preprocess":
        consts = dict(HAS_DLSE=True, BLOCK_M=max(16, 4096 // block_d), BLOCK_D=block_d)
    elif kernel == "fwd":
        consts.update(FWD_M=cfg["FWD_M"], FWD_N=cfg["FWD_N"])
        warps, stages = cfg["FWD_WARPS"], cfg["FWD_STAGES"]
    elif kernel == "dkdv":
        consts.update(DKDV_N=cfg["DKDV_N"], DKDV_M=cfg["DKDV_M"], KEY_MAJOR=cfg["DKDV_KEY_MAJOR"])
        warps, stages = cfg["DKDV_WARPS"], cfg["DKDV_STAGES"]
    elif kernel == "dq":
        consts.update(DQ_M=cfg["DQ_M"], DQ_N=cfg["DQ_N"])
        warps, stages = cfg["DQ_WARPS"], cfg["DQ_STAGES"]
    else:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    fn = getattr(tk, _FUNCTIONS[kernel])

    def arg_type(name):
        if name in ("p_lse", "p_delta", "p_dlse"):
            return "*fp32"
        if name.startswith("p_"):
            return _ELEMENT[dtype] if name in _DATA else "*i32"
        return "fp32" if name in ("qk_scale", "scale") else "i32"

    types = {name: arg_type(name) for name in fn.arg_names if name not in consts}
    # As a launch with contiguous rows of D elements specialises them: every pointer, the row strides and D
    # (L, S and window stay unknown, so the bounds checks are those of odd lengths).
    aligned = [name for name in types if name.startswith("p_") or name == "D" or
               (name.startswith("s") and name[-2:] in ("_b", "_h", "_l"))] if D % 16 == 0 else []
    return compile_for_sm90(fn, types, consts, num_warps=warps, num_stages=stages, aligned=aligned)
