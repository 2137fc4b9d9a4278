"""Host (CPU) time of one linear_scan call, forward and forward+backward, on tiny inputs where the
GPU work is negligible, against accelerated-scan where it is installed. At the headline shape the
bf16 forward+backward takes ~0.36 ms on the H100: a call whose host cost exceeds the GPU time makes
the GPU wait, and benchmarks then measure Python rather than the kernel (bench/NOTES.md).
Usage: python scripts/host_overhead.py [cpu|cuda]"""
import sys
import time

import torch

import arkernels


def per_call_us(fn, device, n=2000):
    for _ in range(50):
        fn()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) / n * 1e6


def main(device):
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
    for name, fn in providers.items():
        fwd = per_call_us(lambda: fn(a, b), device)
        fwd_bwd = per_call_us(lambda: torch.autograd.grad(fn(a, b), (a, b), g), device)
        print(f"{name:17s} host time per call: fwd {fwd:6.1f} us, fwd+bwd {fwd_bwd:6.1f} us")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ("cuda" if torch.cuda.is_available() else "cpu"))
