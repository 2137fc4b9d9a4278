"""Launch-configuration sweep of ssd_chunk_scan's Triton kernels on the GPU machine, at the benchmark's
headline shape (bench/ops/bench_ssd_chunk_scan.py: b4 l4096 h32 p64 n128 g1, bf16, D (h,), dt_bias,
softplus), timed as the report times them (bench.timing.time_ms), with the peer in the same run.

    python scripts/ssd_chunk_scan_sweep.py [fwd|bwd|bwd-final|small|small-bwd|profile|once ...]
                                           (default: fwd bwd profile)

fwd: forward variants (p tile, warps, stages; chunks per segment; BLOCK_Q), each
checked against the default's output (max |diff| / max |out|) so that a broken variant cannot win.
bwd: fwd+bwd of a few variants. profile: the torch profiler's kernels of one fwd+bwd call, ours and
the peer's. once: two default forward calls (for ncu). Overrides go through triton_kernels.ssd_chunk_scan._TUNE (empty in normal use)."""
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: bench/

import torch
from torch.profiler import ProfilerActivity, profile

from arkernels.triton_kernels import ssd_chunk_scan as tk
from bench.ops import bench_ssd_chunk_scan as bench
from bench.timing import time_ms

dev = torch.device(os.environ.get("SWEEP_DEVICE", "cuda"))  # cpu: a smoke run under TRITON_INTERPRET=1
what = " ".join(sys.argv[1:]) or "all"


def case(mode):
    return next(c for c in bench.cases(dev, quick=True) if c.mode == mode and "headline" in c.tags)


def run_variant(label, tune, fn, x, ref=None, block_q=None, bwd_block_q=None):
    tk._TUNE.clear()
    tk._TUNE.update(tune)
    old_q, old_bq = tk.FWD_BLOCK_Q, tk.BWD_BLOCK_Q
    if block_q:
        tk.FWD_BLOCK_Q = block_q
    if bwd_block_q:
        tk.BWD_BLOCK_Q = bwd_block_q
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
        tk.FWD_BLOCK_Q, tk.BWD_BLOCK_Q = old_q, old_bq


ours = bench._provider_fn("arkernels-triton")
try:
    peer = bench._provider_fn(bench.PEER)
except Exception:  # noqa: BLE001
    peer = None


def _fwd_variant(cfg, seg, q):
    return (f"Q {q} cfg {cfg} seg {seg}", {"fwd": cfg, "seg_chunks": seg}, q)


def fwd_variants():
    """Around the forward's default (4 warps, BLOCK_P 32, BLOCK_Q 32, one segment at the headline). The
    earlier sweeps (8 warps, a state held transposed, register caps) are in bench/NOTES.md and
    bench/results/nvidia-h200-2026-12-04c-ssd-sweeps.md."""
    return [_fwd_variant(*v) for v in (
        ((32, 4, 2), 64, 64), ((32, 4, 3), 64, 64), ((16, 4, 2), 64, 64), ((32, 4, 2), 32, 64),
        ((32, 4, 2), 128, 32), ((32, 4, 3), 128, 32), ((16, 4, 2), 128, 32), ((32, 4, 2), 64, 32))]


def bwd_variants():
    out = [(f"seg_chunks {seg}", {"seg_chunks": seg}, None) for seg in (64, 16)]
    for states, dstate, dx, dbc, seg in (((32, 4, 2), (32, 4, 2), None, None, 64),
                                         ((32, 4, 2), (32, 4, 2), None, None, 32),
                                         ((32, 4, 2), (32, 4, 2), (32, 4, 2), None, 64),
                                         ((32, 4, 2), (32, 4, 2), None, (64, 4, 2), 64),
                                         ((32, 4, 2), (32, 4, 2), None, (32, 8, 2), 64),
                                         ((32, 4, 2), (16, 4, 2), (16, 8, 2), None, 64)):
        tune = {"seg_chunks": seg, "fwd": (32, 4, 2)}
        for k, v in (("states", states), ("dstate", dstate), ("dx", dx), ("dbc", dbc)):
            if v:
                tune[k] = v
        out.append((" ".join(f"{k} {v}" for k, v in tune.items()), tune, None))
    return out


def bwd_final():
    """Around the new defaults (sequential passes at 4 warps, dB/dC p tiles of 32): the dx kernel's
    stages, and the backward's BLOCK_Q at 32 (twice the per-chunk state buffers, smaller tiles)."""
    return [("dx (32, 8, 1)", {"dx": (32, 8, 1)}, None), ("dx (32, 8, 3)", {"dx": (32, 8, 3)}, None),
            ("dbc (16, 8, 2)", {"dbc": (16, 8, 2)}, None), ("BWD_BLOCK_Q 32", {}, None, 32),
            ("BWD_BLOCK_Q 32 dx (32, 4, 2)", {"dx": (32, 4, 2)}, None, 32)]


def small_grid():
    """b1 h8 (16 programs of the forward): auto segments against one segment."""
    return [("one segment", {"seg_chunks": 1 << 20}, None), ("segments of 16 chunks", {"seg_chunks": 16}, None)]


SETS = {"fwd": ("fwd", fwd_variants), "bwd": ("fwd+bwd", bwd_variants),
        "bwd-final": ("fwd+bwd", bwd_final), "small": ("fwd", small_grid), "small-bwd": ("fwd+bwd", small_grid)}
if what == "all":
    what = "fwd bwd profile"
for name in what.split():
    if name == "once":
        x = bench._make_inputs(case("fwd"))
        for _ in range(2):
            bench._call(ours, x)()
        torch.cuda.synchronize()
    if name not in SETS:
        continue
    mode, variants = SETS[name]
    c = case(mode)
    if name.startswith("small"):
        c = dataclasses.replace(c, shape=(1, 4096, 8, 64, 128, 1))
    x = bench._make_inputs(c)
    print(f"== {name}: {mode}, headline shape")
    if peer is not None and bench._peer()[0] is not None:
        run_variant("peer mamba_chunk_scan_combined", {}, peer, x)
    ref = run_variant("default", {}, ours, x)
    for label, tune, q, *bq in variants():
        run_variant(label, tune, ours, x, ref, block_q=q, bwd_block_q=bq[0] if bq else None)

if "profile" in what.split():
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
