"""Quick GPU timing of arkernels.selective_scan against mamba-ssm's CUDA scan (when built), for tuning.

Usage: python scripts/selective_scan_timing.py [--peer-build DIR]   (DIR: build_mamba_scan.py's build dir)
Prints one line per (shape, mode, provider): median ms (triton.testing.do_bench) and the max relative
error of the outputs and gradients against the float64 reference on a few channels.
The full report with ceilings is `python -m bench.report --ops selective_scan`.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

import arkernels
from arkernels.reference import selective_scan_ref
from arkernels.testing.numerics import relative_error

SHAPES = [(4, 2048, 4096, 16), (2, 1536, 2048, 16)]


def load_peer(build_dir):
    if not build_dir:
        return None
    from arkernels.testing.peers import mamba_ssm_selective_scan

    src = os.path.join(build_dir, "src")
    sys.path.insert(0, build_dir)
    sys.path.insert(0, os.path.join(src, [d for d in os.listdir(src) if d.startswith("mamba_ssm")][0]))
    fn, why = mamba_ssm_selective_scan()
    print("mamba-ssm selective_scan_fn:", why, flush=True)
    return fn


def inputs(b, d, L, n, dtype=torch.bfloat16, z=False):
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = "cuda"
    u = torch.randn(b, d, L, device=dev, generator=g).to(dtype).requires_grad_()
    delta = (torch.rand(b, d, L, device=dev, generator=g) * 0.1 + 0.01).to(dtype).requires_grad_()
    A = (-torch.rand(d, n, device=dev, generator=g) * 1.7 - 0.3).requires_grad_()
    B = torch.randn(b, n, L, device=dev, generator=g).to(dtype).requires_grad_()
    C = torch.randn(b, n, L, device=dev, generator=g).to(dtype).requires_grad_()
    D = torch.randn(d, device=dev, generator=g).requires_grad_()
    zz = torch.randn(b, d, L, device=dev, generator=g).to(dtype).requires_grad_() if z else None
    return [u, delta, A, B, C, D, zz]


def main():
    from triton.testing import do_bench

    ap = argparse.ArgumentParser()
    ap.add_argument("--peer-build", default=None)
    ap.add_argument("--z", action="store_true")
    args = ap.parse_args()
    peer = load_peer(args.peer_build)
    # Launch-shape sweeps: bench/native (native_bench, tuning knobs), which needs no torch build.
    providers = {"arkernels": lambda *a: arkernels.selective_scan(*a, backend="cuda")}
    if peer is not None:
        providers["mamba-ssm"] = peer
    for (b, d, L, n) in SHAPES:
        x = inputs(b, d, L, n, z=args.z)
        grads_of = [t for t in x if t is not None]
        g_out = torch.randn(b, d, L, device="cuda", dtype=torch.bfloat16)
        rows = [0, d - 1]
        ref_in = [t.detach()[:, rows].double().requires_grad_() if t is not None and t.dim() == 3 and t.shape[1] == d
                  else (t.detach()[rows].double().requires_grad_() if t is not None and t.shape[0] == d else
                        (t.detach().double().requires_grad_() if t is not None else None)) for t in x]
        ref_out = selective_scan_ref(*ref_in)
        ref_leaves = [t for i, t in enumerate(ref_in) if t is not None and i in (0, 1, 2, 5)]
        ref_grads = torch.autograd.grad(ref_out, ref_leaves, g_out[:, rows].double())
        times = {}
        for name, fn in providers.items():
            out = fn(*x)
            gu, gd, gA, gB, gC, gD = torch.autograd.grad(out, grads_of[:6], g_out)[:6]
            errs = [relative_error(out[:, rows], ref_out)]
            errs += [relative_error(gu[:, rows], ref_grads[0]), relative_error(gd[:, rows], ref_grads[1])]
            with torch.no_grad():
                t_f = do_bench(lambda: fn(*x), warmup=25, rep=200)
            t_fb = do_bench(lambda: torch.autograd.grad(fn(*x), grads_of, g_out), warmup=25, rep=200)
            times[name] = (t_f, t_fb)
            print(f"b{b} d{d} l{L} n{n} z={args.z} {name:10s} fwd {t_f:.4f} ms  fwd+bwd {t_fb:.4f} ms  "
                  f"rel err out/du/ddelta {' '.join(f'{e:.1e}' for e in errs)}", flush=True)
        if "mamba-ssm" in times:
            (a_f, a_fb), (p_f, p_fb) = times["arkernels"], times["mamba-ssm"]
            print(f"   speedup vs mamba-ssm: fwd {p_f / a_f:.2f}x  fwd+bwd {p_fb / a_fb:.2f}x", flush=True)


if __name__ == "__main__":
    main()
