"""Launch-configuration sweep of ssd_chunk_scan's Triton kernels on the GPU machine, at the benchmark's
headline shape (bench/ops/bench_ssd_chunk_scan.py: b4 l4096 h32 p64 n128 g1, bf16, D (h,), dt_bias,
softplus), timed as the report times them (bench.timing.time_ms), with the peer in the same run.

    python scripts/ssd_chunk_scan_sweep.py [fwd|bwd|profile|all|once]

fwd: forward variants (p tile, warps, stages of the main pass; chunks per segment; BLOCK_Q), each
checked against the default's output (max |diff| / max |out|) so that a broken variant cannot win.
bwd: fwd+bwd of a few variants. profile: the torch profiler's kernels of one fwd+bwd call, ours and
the peer's. once: two default forward calls (for ncu). Overrides go through triton_kernels.ssd_chunk_scan._TUNE (empty in normal use)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: bench/

import torch
from torch.profiler import ProfilerActivity, profile

from arkernels.triton_kernels import ssd_chunk_scan as tk
from bench.ops import bench_ssd_chunk_scan as bench
from bench.timing import time_ms

dev = torch.device(os.environ.get("SWEEP_DEVICE", "cuda"))  # cpu: a smoke run under TRITON_INTERPRET=1
what = sys.argv[1] if len(sys.argv) > 1 else "all"


def case(mode):
    return next(c for c in bench.cases(dev, quick=True) if c.mode == mode and "headline" in c.tags)


def run_variant(label, tune, fn, x, ref=None, block_q=None):
    tk._TUNE.clear()
    tk._TUNE.update(tune)
    old_q = tk.FWD_BLOCK_Q
    if block_q:
        tk.FWD_BLOCK_Q = block_q
    try:
        call = bench._call(fn, x)
        out = call()
        err = ""
        if ref is not None:
            o = out if torch.is_tensor(out) else out[0]
            r = ref if torch.is_tensor(ref) else ref[0]
            err = f"{((o.float() - r.float()).abs().max() / r.float().abs().max()).item():.2e}"
        t = time_ms(call, dev)
        print(f"{label:48s} {t:8.4f} ms  diff {err}", flush=True)
        return out
    except Exception as e:  # noqa: BLE001  (a variant that does not compile or launch: report, go on)
        print(f"{label:48s} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        return None
    finally:
        tk._TUNE.clear()
        tk.FWD_BLOCK_Q = old_q


ours = bench._provider_fn("arkernels-triton")
try:
    peer = bench._provider_fn(bench.PEER)
except Exception:  # noqa: BLE001
    peer = None

if what == "once":
    x = bench._make_inputs(case("fwd"))
    for _ in range(2):
        bench._call(ours, x)()
    torch.cuda.synchronize()

if what in ("fwd", "all"):
    x = bench._make_inputs(case("fwd"))
    print("== forward, headline shape")
    if peer is not None and bench._peer()[0] is not None:
        run_variant("peer mamba_chunk_scan_combined", {}, peer, x)
    ref = run_variant("default (auto segments)", {}, ours, x)
    # (label, _TUNE overrides, BLOCK_Q); "seg_chunks" 64 = one segment at l 4096 (the old kernel's walk).
    variants = [(f"seg_chunks {seg}", {"seg_chunks": seg}, None) for seg in (64, 16, 8, 4)]
    variants += [(f"state_t seg {seg}", {"state_t": True, "seg_chunks": seg}, None) for seg in (64, 8)]
    for cfg, seg, q, reg in (((32, 8, 2), 16, 32, 0), ((32, 8, 2), 128, 32, 0), ((32, 4, 2), 16, 32, 0),
                             ((32, 8, 2), 16, 32, 128), ((32, 4, 2), 16, 32, 128), ((32, 8, 2), 8, 64, 128),
                             ((16, 8, 2), 64, 64, 0), ((16, 8, 2), 8, 64, 0), ((64, 8, 2), 64, 64, 0),
                             ((32, 8, 3), 8, 64, 0), ((16, 4, 2), 8, 64, 128), ((32, 4, 2), 64, 64, 0)):
        tune = {"fwd": cfg, "seg_chunks": seg}
        if reg:
            tune["maxnreg"] = {"fwd": reg}
        variants.append((f"Q {q} cfg {cfg} seg {seg} maxnreg {reg or '-'}", tune, q))
    for label, tune, q in variants:
        run_variant(label, tune, ours, x, ref, block_q=q)
        run_variant(label + " state_t", dict(tune, state_t=True), ours, x, ref, block_q=q) \
            if "state_t" not in tune and q == 32 else None

if what in ("bwd", "all"):
    x = bench._make_inputs(case("fwd+bwd"))
    print("== fwd+bwd, headline shape")
    if peer is not None and bench._peer()[0] is not None:
        run_variant("peer mamba_chunk_scan_combined", {}, peer, x)
    ref = run_variant("default (auto segments)", {}, ours, x)
    for seg in (64, 16, 8):
        run_variant(f"seg_chunks {seg}", {"seg_chunks": seg}, ours, x, ref)
    for cfg in ((32, 4, 2), (64, 8, 2)):
        run_variant(f"states+dstate cfg {cfg} seg 8", {"states": cfg, "dstate": cfg, "seg_chunks": 8}, ours, x, ref)

if what in ("profile", "all"):
    x = bench._make_inputs(case("fwd+bwd"))
    for name, fn in (("arkernels", ours), ("peer", peer)):
        if fn is None or (name == "peer" and bench._peer()[0] is None):
            continue
        call = bench._call(fn, x)
        for _ in range(3):
            call()
        torch.cuda.synchronize(dev) if dev.type == "cuda" else None
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize(dev) if dev.type == "cuda" else None
        events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        total = sum(e.self_device_time_total for e in events) / 1e3
        print(f"== {name} fwd+bwd: {total:.3f} ms of kernels")
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[:14]:
            print(f"{e.self_device_time_total / 1e3:9.4f} ms {e.count:4d}x  {e.key[:110]}")
