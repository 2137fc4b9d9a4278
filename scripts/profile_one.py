"""Runs a few calls of one op at its headline shape, for profiling under ncu on the GPU machine.
Usage: python scripts/profile_one.py OP DTYPE [fwd|bwd]     OP: linear_scan | selective_scan"""
import sys

import torch

import arkernels

op, dtype, mode = sys.argv[1], getattr(torch, sys.argv[2]), (sys.argv[3] if len(sys.argv) > 3 else "fwd")
dev = "cuda"
if op == "linear_scan":
    args = [(torch.rand(8, 2048, 4096, device=dev) * 0.5 + 0.5).to(dtype), torch.randn(8, 2048, 4096, device=dev).to(dtype)]
    fn = lambda *a: arkernels.linear_scan(*a, backend="cuda")  # noqa: E731
elif op == "selective_scan":
    b, d, L, n = 4, 2048, 4096, 16
    args = [torch.randn(b, d, L, device=dev).to(dtype), (torch.rand(b, d, L, device=dev) * 0.1 + 0.01).to(dtype),
            -torch.rand(d, n, device=dev) - 0.3, torch.randn(b, n, L, device=dev).to(dtype),
            torch.randn(b, n, L, device=dev).to(dtype), torch.randn(d, device=dev)]
    fn = lambda *a: arkernels.selective_scan(*a, backend="cuda")  # noqa: E731
else:
    raise SystemExit(f"unknown op {op}")
leaves = [a.requires_grad_() for a in args if a.is_floating_point()] if mode == "bwd" else []
for _ in range(3):
    out = fn(*args)
    if mode == "bwd":
        torch.autograd.grad(out, leaves, torch.randn_like(out))
torch.cuda.synchronize()
