"""Quick timing of linear_scan on the GPU machine, for iterating on kernels (the full report is
`python -m bench.report`). Checks each provider against a float64 reference (forward and gradients)
before timing it, and times accelerated-scan (if installed) in the same run.

Usage: python scripts/quick_timing.py [B C T] ...   (default: the issue's headline shape 8 2048 4096)
To compare kernel variants, build them behind a temporary knob in the launcher and add one provider
per variant below (bench/NOTES.md records how the current launch shapes were chosen that way).
"""
import sys

import torch
import triton.testing

import arkernels
from arkernels.reference import linear_scan_ref_logdepth

try:
    from accelerated_scan.scalar import scan as peer_scan
except ImportError:
    peer_scan = None


def timed(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


def check(fn, a, b, g, rows=64):
    """Relative errors (out, grad a, grad b) on the first `rows` rows, against float64."""
    a_s, b_s, g_s = (x.reshape(-1, x.shape[-1])[:rows] for x in (a, b, g))
    a64 = a_s.double().requires_grad_()
    b64 = b_s.double().requires_grad_()
    ref = linear_scan_ref_logdepth(a64, b64)
    ga_ref, gb_ref = torch.autograd.grad(ref, (a64, b64), g_s.double())
    a_c = a_s.detach().clone().requires_grad_()
    b_c = b_s.detach().clone().requires_grad_()
    out = fn(a_c.unsqueeze(0), b_c.unsqueeze(0)).squeeze(0)
    ga, gb = torch.autograd.grad(out, (a_c, b_c), g_s)
    return rel(out, ref), rel(ga, ga_ref), rel(gb, gb_ref)


def main(shapes):
    x = torch.empty(2**28, device="cuda")
    copy_ms = timed(lambda: x.clone())
    copy_gbps = 2 * x.numel() * 4 / copy_ms / 1e6
    print(f"copy 1 GiB: {copy_ms:.3f} ms = {copy_gbps:.0f} GB/s")
    del x
    for B, C, T in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            a = (torch.rand(B, C, T, device="cuda") * 0.5 + 0.5).to(dtype).requires_grad_()
            b = torch.randn(B, C, T, device="cuda").to(dtype).requires_grad_()
            g = torch.randn(B, C, T, device="cuda").to(dtype)
            providers = {"cuda": lambda a, b: arkernels.linear_scan(a, b, backend="cuda"),
                         "triton": lambda a, b: arkernels.linear_scan(a, b, backend="triton")}
            if peer_scan is not None:
                providers["accelerated-scan"] = peer_scan
            nbytes = a.numel() * a.element_size()
            for name, fn in providers.items():
                try:
                    errs = check(fn, a, b, g)
                    fwd = timed(lambda: fn(a, b))
                    fb = timed(lambda: torch.autograd.grad(fn(a, b), (a, b), g))
                except Exception as e:  # a broken provider must not hide the others
                    print(f"({B},{C},{T}) {str(dtype):15s} {name:17s} ERROR {type(e).__name__}: {e}")
                    continue
                print(f"({B},{C},{T}) {str(dtype)[6:]:8s} {name:17s} fwd {fwd:.3f} ms "
                      f"({3 * nbytes / fwd / 1e6 / copy_gbps:.0%} of copy)  fwd+bwd {fb:.3f} ms "
                      f"({8 * nbytes / fb / 1e6 / copy_gbps:.0%})  err out/da/db {errs[0]:.1e}/{errs[1]:.1e}/{errs[2]:.1e}")
            del a, b, g
            torch.cuda.empty_cache()


if __name__ == "__main__":
    args = [int(s) for s in sys.argv[1:]]
    shapes = [tuple(args[i:i + 3]) for i in range(0, len(args), 3)] or [(8, 2048, 4096)]
    main(shapes)
