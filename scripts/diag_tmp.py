"""Temporary diagnostics (not committed): per-provider fwd+bwd at one shape in child processes with
CUDA_LAUNCH_BLOCKING=1, and the host overhead of one fwd+bwd call before/after torch.compile."""
import os, subprocess, sys, time
import torch

CHILD = r'''
import sys, torch, arkernels
from arkernels.reference import linear_scan_ref_logdepth
name, B, C, T, dt = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
dtype = getattr(torch, dt)
a = (torch.rand(B, C, T, device="cuda") * 0.5 + 0.5).to(dtype).requires_grad_()
b = torch.randn(B, C, T, device="cuda").to(dtype).requires_grad_()
g = torch.randn(B, C, T, device="cuda").to(dtype)
if name == "peer":
    from accelerated_scan.scalar import scan as fn
elif name == "reference":
    fn = linear_scan_ref_logdepth
else:
    fn = lambda a, b: arkernels.linear_scan(a, b, backend=name)
out = fn(a, b); torch.cuda.synchronize(); print(name, "fwd ok", flush=True)
da, db = torch.autograd.grad(out, (a, b), g); torch.cuda.synchronize(); print(name, "bwd ok", flush=True)
'''

def providers(shape, dt):
    for name in ("cuda", "triton", "peer", "reference"):
        p = subprocess.run([sys.executable, "-c", CHILD, name, *map(str, shape), dt], capture_output=True, text=True,
                           env={**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}, timeout=120)
        print(shape, dt, name, "rc", p.returncode, p.stdout.strip().replace("\n", " | "), p.stderr.strip().splitlines()[-1:] if p.returncode else "")

def overhead():
    import arkernels
    from arkernels.ops import _backends
    a = (torch.rand(4, 8, device="cuda") * 0.5 + 0.5).requires_grad_(); b = torch.randn(4, 8, device="cuda").requires_grad_(); g = torch.randn(4, 8, device="cuda")
    def bench(fn, n=2000):
        for _ in range(50): fn()
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(n): fn()
        torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e6
    print("overhead fwd us %.1f fwd+bwd us %.1f resolve us %.1f" % (bench(lambda: arkernels.linear_scan(a, b)),
          bench(lambda: torch.autograd.grad(arkernels.linear_scan(a, b), (a, b), g)),
          bench(lambda: _backends.resolve("linear_scan", "auto", a.device, ("cuda",)))))
    from accelerated_scan.scalar import scan
    print("peer fwd+bwd us %.1f" % bench(lambda: torch.autograd.grad(scan(a.unsqueeze(0), b.unsqueeze(0)), (a, b), g.unsqueeze(0))))
    from arkernels.reference import linear_scan_ref_logdepth
    f = torch.compile(linear_scan_ref_logdepth, fullgraph=True); f(a.detach(), b.detach())
    print("after compile: fwd us %.1f fwd+bwd us %.1f" % (bench(lambda: arkernels.linear_scan(a, b)),
          bench(lambda: torch.autograd.grad(arkernels.linear_scan(a, b), (a, b), g))))

if __name__ == "__main__":
    overhead()
    providers((8, 32768, 256), "float32")
    providers((8, 1024, 256), "float32")
