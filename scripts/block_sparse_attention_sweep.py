"""Launch-configuration sweep of block_sparse_attention's Triton kernels on the GPU machine, at the benchmark's
cases (bench/ops/bench_block_sparse_attention.py: VAR, SCAM, causal, sliding window; bf16), with FlexAttention
and SDPA timed in the same run, each variant checked against the float64 oracle of the benchmark first (a
broken variant is reported, never timed as a winner).

    python scripts/block_sparse_attention_sweep.py [case ...] [--modes fwd,fwd+bwd] [--peers]

case: var, scam, causal, sliding_window (default: all). Variants replace triton_kernels.block_sparse_attention's
config() for the head dim of the case: each changes one kernel's slice shape, warps or stages on the default
layout (forward shapes in mode fwd, backward shapes in fwd+bwd); the list starts with the current default.
SWEEP_DEVICE=cpu with TRITON_INTERPRET=1: a smoke run at the benchmark's CPU cases (default only). Then the
Hopper CUDA forward (backend "cuda"): its instances (schedule 1-4 x ring slots, through libarkernels' tuning
knobs); for fwd+bwd also with each backward variant, and with each CUDA_BACKWARD setting ("cuda triton": the Triton
backward; "cuda dkdv": the Hopper backward kernel with the Triton dQ; "cuda fused", the default: dQ in the same
kernel; "triton fwd, cuda ...": the same behind the Triton forward)."""
import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: bench/

import torch

from arkernels.triton_kernels import block_sparse_attention as tk
from bench.ops import bench_block_sparse_attention as bench
from bench.timing import time_ms
from tuning_knobs import set_knob  # scripts/ is this script's own directory on the path

dev = torch.device(os.environ.get("SWEEP_DEVICE", "cuda"))
DEFAULT_CONFIG = tk.config


# Candidate shapes per kernel at D <= 128 (warps, stages); D 256 keeps its default. All on the default layout
# (128 x 128 on the GPU), so that a variant changes one kernel's slices and nothing else. The backward shapes
# are those that compile without spills at sm_90a (scripts/block_sparse_attention_resources.py --candidates).
FWD_SHAPES = [(64, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 8, 3), (64, 32, 4, 2)]
# The forward at 64 x 32 takes ~240 registers (2 programs per SM); capped at 168 it compiles without spills at
# D 64 (3 per SM): for short sequences (VAR), where nothing hides a program's latency but other programs.
FWD_MAXNREG = {64: 168}
DKDV_SHAPES = [(128, 32, 8, 2, True), (128, 32, 8, 3, True), (128, 64, 8, 2, True), (64, 64, 8, 2, True),
               (64, 32, 4, 2, True), (64, 64, 4, 2, True), (32, 32, 4, 2, True), (32, 64, 4, 2, False)]
DQ_SHAPES = [(128, 32, 8, 2), (128, 32, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2), (64, 32, 4, 2), (64, 64, 4, 2),
             (32, 32, 4, 2)]


def _label(kernel: str, shape: tuple) -> str:
    a, b, w, st = shape[:4]
    return f"{kernel} {a}x{b} w{w} s{st}" + ("" if len(shape) < 5 or shape[4] else " qmaj")


def forward_variants(D: int, dtype, device) -> list[tuple[str, dict]]:
    base = DEFAULT_CONFIG(D, dtype, device)
    if device.type != "cuda" or D > 128:
        return []
    out = []
    for m, n, w, st in FWD_SHAPES:
        cfg = dict(base, FWD_M=m, FWD_N=n, FWD_WARPS=w, FWD_STAGES=st)
        if cfg != base:
            out.append((_label("fwd", (m, n, w, st)), cfg))
    if D in FWD_MAXNREG:
        out.append((f"fwd default r{FWD_MAXNREG[D]}", dict(base, FWD_MAXNREG=FWD_MAXNREG[D])))
    # The same forward on a layout at its own 64 x 32 tiling (the session-6 default): what the coarse layout
    # costs it (steps that see nothing inside partial tiles; per head, VAR visits 190 steps (68 masked) at
    # 128 x 128 against 168 (28), the sliding window 4320 (960) against 4080 (480)).
    out.append(("fwd on 64x32 layout", dict(base, BLOCK_M=64, BLOCK_N=32)))
    return out


def backward_variants(D: int, dtype, device) -> list[tuple[str, dict]]:
    base = DEFAULT_CONFIG(D, dtype, device)
    if device.type != "cuda" or D > 128:
        return []
    out = []
    for n, m, w, st, km in DKDV_SHAPES:
        cfg = dict(base, DKDV_N=n, DKDV_M=m, DKDV_WARPS=w, DKDV_STAGES=st, DKDV_KEY_MAJOR=km)
        if cfg != base:
            out.append((_label("dkdv", (n, m, w, st, km)), cfg))
    for m, n, w, st in DQ_SHAPES:
        cfg = dict(base, DQ_M=m, DQ_N=n, DQ_WARPS=w, DQ_STAGES=st)
        if cfg != base:
            out.append((_label("dq", (m, n, w, st)), cfg))
    return out


def variants(D: int, dtype, mode: str) -> list[tuple[str, dict]]:
    """The default first, then the forward's shapes (mode fwd) or each backward kernel's in turn (fwd+bwd)."""
    more = forward_variants(D, dtype, dev) if mode == "fwd" else backward_variants(D, dtype, dev)
    return [("default", DEFAULT_CONFIG(D, dtype, dev))] + more


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
    for name, cfg in variants(D, case.dtype, case.mode):
        if keep is not None and name != "default" and name not in keep:
            continue
        tk.config = lambda D_, dtype_, device_, cfg=cfg: cfg  # noqa: E731
        try:
            _time_variant(label, name, "arkernels-triton", case, sets, oracle)
            # fwd+bwd: the CUDA forward with this variant's Triton backward (same layout).
            if case.mode != "fwd" and D in (64, 128) and (name == "default" or name.startswith(("dkdv", "dq"))):
                _time_variant(label, f"{name} +cuda fwd", "arkernels-cuda", case, sets, oracle)
        finally:
            tk.config = DEFAULT_CONFIG
    # The Hopper CUDA forward's instances (with the default tiling's Triton backward).
    # (4, 3) does not fit at D 128: the launcher refuses it, and its row reports that, as native_bench's does.
    for schedule, stages in ((1, 2), (1, 3), (2, 2), (2, 3), (3, 2), (3, 3), (4, 2), (4, 3)):
        if keep is not None and f"cuda s{schedule} x{stages}" not in keep:
            continue
        try:
            set_knob("bsa_fwd_schedule", schedule)
            set_knob("bsa_fwd_stages", stages)
            _time_variant(label, f"cuda s{schedule} x{stages}", "arkernels-cuda", case, sets, oracle)
        finally:
            set_knob("bsa_fwd_schedule", 0)
            set_knob("bsa_fwd_stages", 0)
    # The backward settings (ops.block_sparse_attention.CUDA_BACKWARD; the default rows take the module's default,
    # "fused"): the Triton backward ("triton"), the Hopper kernel with the Triton dQ ("dkdv") and with dQ in the same
    # kernel ("fused"), behind the CUDA forward ("cuda ...") and behind the Triton forward ("triton fwd, cuda ...");
    # checked like every variant.
    if case.mode != "fwd" and D in (64, 128):
        bsa_ops = importlib.import_module("arkernels.ops.block_sparse_attention")  # the module, not the function

        runs = bsa_ops._dkdv_cuda_runs(D, 128, 128, case.dtype, case.device)
        if not runs:  # the rows would time the Triton backward under the kernel's name
            print(f"{label:44s} cuda dkdv / fused      skipped: the Hopper backward kernel does not run here",
                  flush=True)
        for mode in ("triton", "dkdv", "fused") if runs else ():
            for provider, name in (("arkernels-cuda", f"cuda {mode}"),
                                   ("arkernels-triton", f"triton fwd, cuda {mode}")):
                if keep is not None and name not in keep:
                    continue
                previous, bsa_ops.CUDA_BACKWARD = bsa_ops.CUDA_BACKWARD, mode
                try:
                    _time_variant(label, name, provider, case, sets, oracle)
                finally:
                    bsa_ops.CUDA_BACKWARD = previous
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


def _spin_up(seconds: float = 0.5) -> None:
    """Keeps the GPU busy for a moment before the first timing: the first timed row of a sweep process has read
    up to 1.7x slower than the same variant later (VAR Triton default, 0.276 vs 0.158 ms, session 6), after its
    own warm-up call, which points at clocks or first-use costs outside the variant."""
    if dev.type != "cuda":
        return
    import time

    a = torch.randn(4096, 4096, device=dev, dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(8):
            a @ a
        torch.cuda.synchronize(dev)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cases", nargs="*")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    p.add_argument("--peers", action="store_true", help="also time flex and sdpa on each case")
    p.add_argument("--variants", default="", help="comma-separated variant names to time besides the default "
                   "(e.g. 'dkdv 128x64 w8 s2,cuda s2 x2'); empty: all")
    args = p.parse_args()
    modes = args.modes.split(",")
    _spin_up()
    for case in bench.cases(dev, quick=False):
        if case.mode in modes and (not args.cases or case.params["name"] in args.cases):
            run_case(case, args.peers, set(args.variants.split(",")) if args.variants else None)


if __name__ == "__main__":
    main()
