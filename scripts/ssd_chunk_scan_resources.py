"""Compile the ssd_chunk_scan Triton kernels for sm_90 without a GPU and print their resource usage.

    python scripts/ssd_chunk_scan_resources.py [--dtypes bf16,fp16,fp32] [--n 16,64,128,256] [--p 64]

For every kernel and its launch configuration (triton_kernels/ssd_chunk_scan.py: config()), with
every optional feature on (the heaviest variant), prints registers per thread, spill stack bytes
and shared memory, and flags shared memory above the H100's 227 KB per block (a launch failure).
Arguments are specialised as a launch at the benchmark's headline shape (b4 l4096 h32 g1, contiguous
inputs, at each row's n and p) specialises them as divisible by 16: every pointer and every int that
is a multiple of 16. (Ints equal to 1, which a launch turns into constants, stay runtime ints here.)
Compilation errors of any variant show here too. Registers come from cuobjdump (shipped with
Triton) on the cubin. This is how the launch configurations were chosen on a machine without a GPU;
timings still need the GPU.
"""
from __future__ import annotations

import argparse
import collections
import functools
import sys
import warnings

import triton

from arkernels.testing.triton_compile import compile_for_sm90, compile_report
from arkernels.triton_kernels import ssd_chunk_scan as tk

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _signature(fn, dtype: str, consts: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ("p_seq",):
            sig[name] = "*i32"
        elif name in ("p_cu", "p_coff", "p_ctab"):
            sig[name] = "*i64"
        elif name in ("p_x", "p_B", "p_C", "p_z", "p_out", "p_dt", "p_dout", "p_dx", "p_dz", "p_states",
                      "p_dstates", "p_dB", "p_dC"):
            sig[name] = f"*{dtype}"
        elif name.startswith("p_"):
            sig[name] = "*fp32"
        elif name in ("dt_min", "dt_max"):
            sig[name] = "fp32"
        else:
            sig[name] = "i64"
    return sig


@functools.lru_cache(maxsize=None)
def _aligned(P: int, n: int, light: bool) -> dict:
    """{kernel: names of the arguments a launch specialises as divisible by 16} at the headline shape (this
    p and n): every tensor pointer (torch allocations are 16-byte aligned) and every int that is a multiple
    of 16, except those the kernel does not specialise (do_not_specialize). The values are the launchers' own: ssd_bwd (which
    also launches the forward kernel, for the states) runs on meta tensors with the launches recorded
    instead of run, so no stride list is repeated here."""
    import torch

    b, L, H, G = 4, 4096, 32, 1
    meta = dict(device="meta", dtype=torch.bfloat16)  # the dtype changes no stride
    x, dt, A = torch.empty(b, L, H, P, **meta), torch.empty(b, L, H, **meta), torch.empty(H, **meta)
    B, C = torch.empty(b, L, G, n, **meta), torch.empty(b, L, G, n, **meta)
    # The inputs the variants' flags use; the light one's D is per head, as the benchmark's.
    D = torch.empty(H if light else (H, P), **meta)
    z = None if light else torch.empty_like(x)
    seq = None if light else torch.empty(b, L, dtype=torch.int32, device="meta")
    state = torch.empty(b, H, P, n, dtype=torch.float32, device="meta")
    launches = {}

    def record(fn):  # wrap_triton(fn)[grid](*args) keeps the first launch's arguments by name
        return collections.defaultdict(lambda: lambda *a, **kw: launches.setdefault(fn, dict(zip(fn.arg_names, a))))

    wrap, tune = tk.wrap_triton, dict(tk._TUNE)
    tk.wrap_triton = record
    # The GPU's choices at this shape: one segment per sequence (256 programs fill it; off the GPU the
    # launcher would cut one per chunk) and the dB/dC head split in 2 (which it also picks off the GPU).
    tk._TUNE.setdefault("seg_chunks", L)
    try:
        tk.ssd_bwd(x, state, x, dt, A, B, C, D, z, A, None if light else state, seq, None, True, 0.0, float("inf"))
    finally:
        tk.wrap_triton = wrap
        tk._TUNE.clear()
        tk._TUNE.update(tune)
    return {fn: [k for k, v in a.items() if isinstance(v, torch.Tensor)
                 or (type(v) is int and v % 16 == 0 and k not in fn.do_not_specialize)]
            for fn, a in launches.items()}


def _variants(dtype: str, block_n: int, P: int, light: bool = False):
    import torch

    tdt = getattr(torch, TORCH_DTYPES[dtype])
    n = block_n
    prec = "ieee" if dtype == "fp32" else "tf32"
    base = dict(HAS_Z=not light, HAS_DTB=True, HAS_SEQ=not light, VARLEN=False, SOFTPLUS=True, PREC=prec,
                BLOCK_N=block_n)
    fwd = dict(base, HAS_D=True, D_PER_HEAD=light, HAS_INIT=not light, SEG_LOCAL=False)
    yield "fwd", tk._ssd_fwd_kernel, dict(fwd, WRITE_OUT=True, STORE_STATES=False, BLOCK_Q=tk.FWD_BLOCK_Q), \
        tk.config("fwd", tdt, P, n)
    yield "segment", tk._ssd_fwd_kernel, dict(fwd, WRITE_OUT=False, STORE_STATES=False, SEG_LOCAL=True,
                                              BLOCK_Q=tk.FWD_BLOCK_Q), tk.config("segment", tdt, P, n)
    yield "states", tk._ssd_fwd_kernel, dict(fwd, WRITE_OUT=False, STORE_STATES=True, BLOCK_Q=tk.BWD_BLOCK_Q), \
        tk.config("states", tdt, P, n)
    yield "dstate", tk._ssd_bwd_dstate_kernel, dict(base, HAS_DFINAL=True, WRITE_DINIT=True, SEG_LOCAL=False,
                                                    BLOCK_Q=tk.BWD_BLOCK_Q), tk.config("dstate", tdt, P, n)
    yield "dx", tk._ssd_bwd_dx_kernel, dict(base, HAS_D=True, D_PER_HEAD=False, BLOCK_Q=tk.BWD_BLOCK_Q), \
        tk.config("dx", tdt, P, n)
    yield "dbc", tk._ssd_bwd_dbc_kernel, dict(base, BLOCK_Q=tk.BWD_BLOCK_Q), tk.config("dbc", tdt, P, n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="bf16,fp16,fp32")
    ap.add_argument("--n", default="16,64,128,256")
    ap.add_argument("--p", type=int, default=64)
    ap.add_argument("--only", default="", help="comma-separated kernel names (default: all)")
    ap.add_argument("--light", action="store_true",
                    help="the benchmark's features (D per head, dt_bias, softplus; no z, seq_idx, initial state) "
                         "instead of every feature on")
    ap.add_argument("--tune", default="", help='launch overrides, e.g. \'{"fwd": [32, 4, 2]}\' (tk._TUNE)')
    ap.add_argument("--block-q", type=int, default=0, help="the forward's BLOCK_Q (default: FWD_BLOCK_Q)")
    args = ap.parse_args(argv)
    if args.block_q:
        tk.FWD_BLOCK_Q = args.block_q
    if args.tune:
        import json

        tk._TUNE.update({k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.tune).items()})
    warnings.filterwarnings("ignore", message="tl.make_block_ptr is deprecated")
    failures = 0
    print(f"{'kernel':7s} {'dtype':5s} {'n':>4s} {'BLOCK_P':>7s} {'warps':>5s} {'stages':>6s} {'regs':>5s} "
          f"{'spill B':>7s} {'smem B':>7s}")
    for dtype in args.dtypes.split(","):
        for n in (int(v) for v in args.n.split(",")):
            for name, fn, consts, (bp, warps, stages) in _variants(dtype, max(16, triton.next_power_of_2(n)), args.p,
                                                                   args.light):
                if args.only and name not in args.only.split(","):
                    continue
                consts = dict(consts, BLOCK_P=bp)
                report, failed = compile_report(lambda: compile_for_sm90(
                    fn, _signature(fn, dtype, consts), consts, num_warps=warps, num_stages=stages,
                    aligned=_aligned(args.p, n, args.light)[fn]))
                failures += failed
                print(f"{name:7s} {dtype:5s} {n:4d} {bp:7d} {warps:5d} {stages:6d} {report}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
