"""Host (CPU) time per call of arkernels ops on tiny inputs, where the GPU work is negligible, so that a
call's host cost is what the clock sees. A call whose host cost exceeds its GPU time makes the GPU wait,
and benchmarks then time Python rather than the kernel (bench/NOTES.md):

- linear_scan forward and forward+backward, against accelerated-scan where it is installed (at the
  headline shape the bf16 forward+backward takes ~0.36 ms on the H100);
- block_sparse_attention forward and forward+backward at a tiny VAR-like mask (scales of 1, 4, 9, 16, 25
  tokens), D 64 and 128, each backward setting (CUDA_BACKWARD) on cuda: at VAR's benchmark shape the GPU work of
  forward+backward is ~0.4-0.5 ms, so a host cost near that makes its timings host-bound (the VAR rows moved by up
  to 1.7x between runs in session 9);
- the decode steps (selective_state_update, Mamba-1 and Mamba-2 layouts, and causal_conv1d_update), each
  through the public function and through its torch op directly (torch.ops.arkernels.*): the difference
  is the Python wrapper's cost. A decode step's kernel takes ~10-20 us, so this difference matters there.

Usage: python scripts/host_overhead.py [cpu|cuda] [--repeats R] [--only attention|decode|linear_scan ...]
Each number is the median over R interleaved rounds (wrapper and raw op alternate, so a noisy host
affects both alike)."""
import argparse
import statistics
import time

import torch

import arkernels


def per_call_us(fn, device, n=1000):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) / n * 1e6


def interleaved(fns: dict, device, repeats: int) -> dict:
    """Median per-call microseconds of each callable, rounds alternating between them."""
    for fn in fns.values():
        for _ in range(50):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(per_call_us(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def linear_scan_rows(device, repeats):
    a = (torch.rand(1, 4, 8, device=device) * 0.5 + 0.5).requires_grad_()
    b = torch.randn(1, 4, 8, device=device).requires_grad_()
    g = torch.randn(1, 4, 8, device=device)
    providers = {"arkernels": arkernels.linear_scan}
    if device == "cuda":
        try:
            from accelerated_scan.scalar import scan

            providers["accelerated-scan"] = scan
        except ImportError:
            pass
    fns = {}
    for name, fn in providers.items():
        fns[f"linear_scan fwd, {name}"] = lambda fn=fn: fn(a, b)
        fns[f"linear_scan fwd+bwd, {name}"] = lambda fn=fn: torch.autograd.grad(fn(a, b), (a, b), g)
    return interleaved(fns, device, repeats)


def attention_rows(device, repeats):
    """block_sparse_attention through the public function (mask given as a Mask: its layout is cached on it)."""
    import importlib

    bsa_ops = importlib.import_module("arkernels.ops.block_sparse_attention")  # the module, not the function
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    mask = arkernels.masks.block_causal([0, 1, 5, 14, 30, 55])
    fns, settings = {}, {}
    for D in (64, 128):
        q, k, v, g = (torch.randn(1, 2, 55, D, device=device, dtype=dtype) for _ in range(4))
        leaves = [t.requires_grad_() for t in (q, k, v)]
        fns[f"block_sparse_attention fwd, D {D}"] = lambda leaves=leaves: arkernels.block_sparse_attention(
            *leaves, mask)
        for mode in bsa_ops.CUDA_BACKWARDS if device == "cuda" else (bsa_ops.CUDA_BACKWARD,):
            name = f"block_sparse_attention fwd+bwd, D {D}" + (f", CUDA_BACKWARD {mode}" if device == "cuda" else "")
            settings[name] = mode
            fns[name] = lambda leaves=leaves, g=g: torch.autograd.grad(
                arkernels.block_sparse_attention(*leaves, mask), leaves, g)

    def with_setting(name, fn):
        def call():
            previous, bsa_ops.CUDA_BACKWARD = bsa_ops.CUDA_BACKWARD, settings.get(name, bsa_ops.CUDA_BACKWARD)
            try:
                return fn()
            finally:
                bsa_ops.CUDA_BACKWARD = previous
        return call

    return interleaved({name: with_setting(name, fn) for name, fn in fns.items()}, device, repeats)


def decode_rows(device, repeats):
    """Public function vs torch op, for each decode step (tiny shapes: batch 2)."""
    def t(*shape):
        return torch.randn(*shape, device=device)

    ops = torch.ops.arkernels
    m1 = dict(state=t(2, 8, 4), x=t(2, 8), dt=t(2, 8), A=-torch.rand(8, 4, device=device), B=t(2, 4), C=t(2, 4),
              D=t(8), z=t(2, 8), dt_bias=t(8))
    m2 = dict(state=t(2, 4, 8, 4), x=t(2, 4, 8), dt=t(2, 4, 8), A=(-torch.rand(4, device=device))[:, None, None]
              .expand(4, 8, 4), B=t(2, 1, 4), C=t(2, 1, 4), D=t(4, 8), z=t(2, 4, 8), dt_bias=t(4, 8))
    conv = dict(x=t(2, 8), conv_state=t(2, 8, 3), weight=t(8, 4), bias=t(8))

    def ssu_args(a):
        return (a["state"], a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["z"], a["dt_bias"], True, None)

    fns = {
        "selective_state_update Mamba-1, arkernels.*": lambda: arkernels.selective_state_update(*ssu_args(m1)),
        "selective_state_update Mamba-1, torch.ops": lambda: ops.selective_state_update(*ssu_args(m1)),
        "selective_state_update Mamba-2, arkernels.*": lambda: arkernels.selective_state_update(*ssu_args(m2)),
        "selective_state_update Mamba-2, torch.ops": lambda: ops.selective_state_update(*ssu_args(m2)),
        "causal_conv1d_update, arkernels.*": lambda: arkernels.causal_conv1d_update(
            conv["x"], conv["conv_state"], conv["weight"], conv["bias"], "silu"),
        "causal_conv1d_update, torch.ops": lambda: ops.causal_conv1d_update(
            conv["x"][..., None], conv["conv_state"], conv["weight"], conv["bias"], True, None, None),
    }
    with torch.no_grad():
        return interleaved(fns, device, repeats)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("device", nargs="?", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=9)
    groups = {"linear_scan": linear_scan_rows, "attention": attention_rows, "decode": decode_rows}
    parser.add_argument("--only", choices=sorted(groups), action="append",
                        help="time only these groups of rows (repeatable; default: all)")
    args = parser.parse_args()
    print(f"host time per call on {args.device} (median of {args.repeats} interleaved rounds)\n")
    print("| call | us |\n|---|---|")
    for group, rows in groups.items():
        if args.only and group not in args.only:
            continue
        for name, us in rows(args.device, args.repeats).items():
            print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
