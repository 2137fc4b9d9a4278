"""Runs one linear_scan forward at the headline shape, for profiling under ncu on the GPU machine.
Usage: python scripts/profile_one.py DTYPE [fwd|bwd]"""
import sys

import torch

import arkernels

dtype = getattr(torch, sys.argv[1])
a = (torch.rand(8, 2048, 4096, device="cuda") * 0.5 + 0.5).to(dtype).requires_grad_()
b = torch.randn(8, 2048, 4096, device="cuda").to(dtype).requires_grad_()
for _ in range(3):
    out = arkernels.linear_scan(a, b, backend="cuda")
    if len(sys.argv) > 2 and sys.argv[2] == "bwd":
        torch.autograd.grad(out, (a, b), torch.randn_like(out))
torch.cuda.synchronize()
