"""Launch-configuration sweep of block_sparse_attention's Triton kernels on the GPU machine, at the benchmark's
cases (bench/ops/bench_block_sparse_attention.py: VAR, SCAM, causal, sliding window; bf16), with FlexAttention
and SDPA timed in the same run, each variant checked against the float64 oracle of the benchmark first (a
broken variant is reported, never timed as a winner).

    python scripts/block_sparse_attention_sweep.py [case ...] [--modes fwd,fwd+bwd] [--peers]

case: var, scam, causal, sliding_window (default: all). Variants replace triton_kernels.block_sparse_attention's
config() for the head dim of the case (the op builds the mask's layout at each variant's tiling); the list
below starts with the current default. SWEEP_DEVICE=cpu with TRITON_INTERPRET=1: a smoke run at the benchmark's
CPU cases (tiny tiles only). Then the Hopper CUDA forward (backend "cuda"): its four instances (schedule x
ring slots, through libarkernels' tuning knobs) and, for fwd+bwd, with each Triton tiling's backward."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: bench/

import torch

from arkernels.triton_kernels import block_sparse_attention as tk
from bench.ops import bench_block_sparse_attention as bench
from bench.timing import time_ms

dev = torch.device(os.environ.get("SWEEP_DEVICE", "cuda"))
DEFAULT_CONFIG, DEFAULT_CUDA_CONFIG = tk.config, tk.cuda_forward_config


_tuning = []


def _tuning_set(name: str, value: int) -> None:
    """libarkernels' process-wide launch knobs (csrc/common/tuning.hpp), through the already loaded library."""
    if not _tuning:
        import ctypes
        import glob

        import arkernels

        here = os.path.dirname(arkernels.__file__)
        for cand in ["libarkernels.so", *glob.glob(os.path.join(here, "lib", "libarkernels.so*")),
                     *glob.glob(os.path.join(here, "libarkernels.so*"))]:
            try:
                _tuning.append(ctypes.CDLL(cand).ark_tuning_set)
                break
            except OSError:
                continue
        else:
            raise RuntimeError("libarkernels not found for ark_tuning_set")
    if not _tuning[0](name.encode(), int(value)):
        raise ValueError(f"unknown knob {name}")


def variants(D: int, dtype) -> list[tuple[str, dict]]:
    base = DEFAULT_CONFIG(D, dtype, dev)
    if dev.type != "cuda":
        return [("default", base), ("16x16", dict(base, BLOCK_M=16, BLOCK_N=16))]
    out = [("default", base)]
    # (BLOCK_M, BLOCK_N, warps, forward stages, dK/dV query sub-tile, dQ key sub-tile (None: the default's),
    # dK/dV key-major). At D 128 the 64-key tiles put the key-major dK/dV dots on warpgroup MMAs (sub-tile 16
    # spills least); the 32-key tiling does so only query-major with a 64-row sub-tile (spilling ~400 B: sm_90a).
    # FlexAttention's backward shape (dK/dV: 128 keys x 64-query steps; dQ: 128 queries x 64-key steps) is left
    # out: in these kernels it spills 600-1800 bytes per kernel at D 128 (sm_90a compile, cuobjdump), against
    # 16-80 for the default.
    for bm, bn, w, fs, sub_m, sub_n, km in [
            (128, 64, 8, 3, None, None, True), (128, 64, 8, 3, 16, None, True), (128, 32, 8, 3, 64, None, False),
            (128, 64, 4, 3, None, None, True), (128, 128, 8, 2, None, None, True), (64, 64, 4, 3, None, None, True),
            (64, 32, 4, 3, None, None, True), (128, 32, 4, 3, None, None, True), (64, 128, 4, 2, None, None, True),
            (128, 32, 8, 3, None, None, True), (64, 16, 4, 3, 16, None, True), (64, 32, 4, 2, None, None, True),
            (64, 32, 8, 3, None, None, True)]:
        if D > 128 and bm * bn > 64 * 64:
            continue
        sub_m = min(base["BWD_SUB_M"] if sub_m is None else sub_m, bm)
        sub_n = min(base["BWD_SUB_N"] if sub_n is None else sub_n, bn)
        cfg = dict(base, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, FWD_STAGES=fs,
                   BWD_SUB_M=sub_m, BWD_SUB_N=sub_n, BWD_KEY_MAJOR=km)
        if (bm, bn, w, fs, sub_m, sub_n, km) != (base["BLOCK_M"], base["BLOCK_N"], base["num_warps"],
                                                 base["FWD_STAGES"], base["BWD_SUB_M"], base["BWD_SUB_N"],
                                                 base.get("BWD_KEY_MAJOR", True)):
            out.append((f"{bm}x{bn} w{w} s{fs} sub{sub_m}{'' if sub_n == base['BWD_SUB_N'] else f'/{sub_n}'}"
                        f"{'' if km else ' qmaj'}", cfg))
    return out


def _time_variant(label: str, name: str, provider: str, case, sets, oracle) -> None:
    """One checked, timed row: a variant that misses the oracle is reported WRONG and never timed."""
    try:
        fn = bench._provider_fn(provider, case)
        err = bench._check(provider, fn, sets[0], oracle)
        ok = err <= 2 * 1e-2
        t = time_ms(bench._call(fn, sets[0]), case.device) if ok else float("nan")
        tflops = case.flops / (t * 1e-3) / 1e12 if ok else float("nan")
        print(f"{label:44s} {name:22s} {t:8.4f} ms {tflops:7.1f} TFLOP/s  err {err:.1e}{'' if ok else '  WRONG'}",
              flush=True)
    except Exception as e:  # noqa: BLE001  (a variant that does not compile or launch: report, go on)
        print(f"{label:44s} {name:22s} failed: {type(e).__name__}: {str(e)[:160]}", flush=True)


def _sdpa_causal(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def run_case(case, peers: bool, keep: set[str] | None = None):
    sets = [bench._make_inputs(case)]
    oracle = bench._oracle(case, sets[0])
    B, H, L, D = case.shape
    label = f"{case.params['name']} {case.mode} {case.shape}"
    for name, cfg in variants(D, case.dtype):
        if keep is not None and name != "default" and name not in keep:
            continue
        tk.config = lambda D_, dtype_, device_, cfg=cfg: cfg  # noqa: E731
        try:
            _time_variant(label, name, "arkernels-triton", case, sets, oracle)
            # fwd+bwd: the CUDA forward with this tiling's Triton backward (the CUDA kernel takes any
            # 128 x block_k layout with block_k dividing 128; backend "cuda" lays out at cuda_forward_config).
            if case.mode != "fwd" and cfg["BLOCK_M"] == 128 and 128 % cfg["BLOCK_N"] == 0:
                tk.cuda_forward_config = tk.config
                _time_variant(label, f"{name} +cuda fwd", "arkernels-cuda", case, sets, oracle)
        finally:
            tk.config, tk.cuda_forward_config = DEFAULT_CONFIG, DEFAULT_CUDA_CONFIG
    # The Hopper CUDA forward's instances (with the default tiling's Triton backward).
    for schedule, stages in ((1, 2), (1, 3), (2, 2), (2, 3)):
        if keep is not None and f"cuda s{schedule} x{stages}" not in keep:
            continue
        try:
            _tuning_set("bsa_fwd_schedule", schedule)
            _tuning_set("bsa_fwd_stages", stages)
            _time_variant(label, f"cuda s{schedule} x{stages}", "arkernels-cuda", case, sets, oracle)
        finally:
            _tuning_set("bsa_fwd_schedule", 0)
            _tuning_set("bsa_fwd_stages", 0)
    if peers:
        # sdpa-causal: SDPA's causal forward at the case's shape (FlashAttention inside), the yardstick
        # for the VAR mask; TFLOP/s on the case's visible pairs, so compare its time only.
        for peer in ("flex", "sdpa", "sdpa-causal"):
            try:
                fn = (_sdpa_causal if peer == "sdpa-causal" else bench._provider_fn(peer, case))
                t = time_ms(bench._call(fn, sets[0]), case.device)
                print(f"{label:44s} {peer:18s} {t:8.4f} ms {case.flops / (t * 1e-3) / 1e12:7.1f} TFLOP/s", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"{label:44s} {peer:18s} failed: {type(e).__name__}: {str(e)[:160]}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cases", nargs="*")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    p.add_argument("--peers", action="store_true", help="also time flex and sdpa on each case")
    p.add_argument("--variants", default="", help="comma-separated variant names to time besides the default "
                   "(e.g. '64x32 w4 s3 sub32,cuda s2 x2'); empty: all")
    args = p.parse_args()
    modes = args.modes.split(",")
    for case in bench.cases(dev, quick=False):
        if case.mode in modes and (not args.cases or case.params["name"] in args.cases):
            run_case(case, args.peers, set(args.variants.split(",")) if args.variants else None)


if __name__ == "__main__":
    main()
