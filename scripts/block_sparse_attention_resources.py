"""Registers, spill bytes and shared memory of block_sparse_attention's Triton kernels compiled for sm_90a
without a GPU, for the default configuration and candidate shapes (every rule flag on: the largest variant).

    python scripts/block_sparse_attention_resources.py [--d 64,128,256] [--dtypes bf16] [--kernels fwd,dkdv,dq]
        [--candidates]

--candidates: also the backward shapes of scripts/block_sparse_attention_sweep.py (backward_variants), so that
the sweep times only shapes that do not spill. Registers and spills come from cuobjdump on the cubin."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/: the sweep's variant table

import torch

from arkernels.testing.block_sparse_attention_compile import KERNELS, compile_kernel
from arkernels.testing.triton_compile import compile_report
from arkernels.triton_kernels import block_sparse_attention as tk

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_SHAPE = {"fwd": ("FWD_M", "FWD_N"), "dkdv": ("DKDV_N", "DKDV_M"), "dq": ("DQ_M", "DQ_N"), "preprocess": ()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", default="64,128,256")
    ap.add_argument("--dtypes", default="bf16")
    ap.add_argument("--kernels", default="fwd,dkdv,dq")
    ap.add_argument("--candidates", action="store_true")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    failures = 0
    print(f"{'config':28s} {'kernel':10s} {'D':>4s} {'dtype':5s} {'shape':>9s} {'warps':>5s} {'stages':>6s} "
          f"{'regs':>5s} {'spill B':>7s} {'smem B':>7s}")
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        for D in (int(d) for d in args.d.split(",")):
            configs = [("default", tk.config(D, dtype, "cuda"))]
            if args.candidates:
                from block_sparse_attention_sweep import backward_variants

                configs += backward_variants(D, dtype, torch.device("cuda"))
            for label, cfg in configs:
                for kernel in args.kernels.split(","):
                    assert kernel in KERNELS, kernel
                    if label != "default" and kernel == "fwd":
                        continue  # the backward variants keep the default forward
                    shape = "x".join(str(cfg[k]) for k in _SHAPE[kernel])
                    pre = kernel.upper() if kernel != "preprocess" else None
                    warps = cfg[f"{pre}_WARPS"] if pre else 4
                    stages = cfg[f"{pre}_STAGES"] if pre else 1
                    report, failed = compile_report(lambda: compile_kernel(kernel, D, dtype, cfg))
                    failures += failed
                    print(f"{label:28s} {kernel:10s} {D:4d} {name:5s} {shape:>9s} {warps:5d} {stages:6d} {report}",
                          flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
