"""Where a block_sparse_attention call of the benchmark (bench/ops/bench_block_sparse_attention.py) spends its
time, per provider: wall time of one synchronised call, the host time to issue it (no sync), and the torch
profiler's CUDA kernels of one call. A call whose issue time is near its wall time is host-bound: its
benchmark time measures Python and launches, not kernels.
Usage (GPU machine): python scripts/profile_attention_step.py [case] [fwd|fwd+bwd] [provider ...]
(case: var, scam, causal, sliding_window; providers default: arkernels-cuda flex; "arkernels-cuda+direct": with
ops.block_sparse_attention.DIRECT_EAGER_BACKWARD on). HOST_PROFILE=n: also the
Python functions with the most own time over n unsynchronised calls (cProfile), to find a host-bound call's cost.
CPU_PROFILE=1: the torch profiler's CPU events of one call by self time (aten ops and CUDA runtime calls: a
cudaStreamSynchronize or cudaMemcpy there is a hidden sync; session 14's cProfile did not show where ~1 ms went).
"""
import cProfile
import importlib
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: bench/

import torch
from torch.profiler import ProfilerActivity, profile

from bench.ops import bench_block_sparse_attention as bench

name = sys.argv[1] if len(sys.argv) > 1 else "var"
mode = sys.argv[2] if len(sys.argv) > 2 else "fwd+bwd"
providers = sys.argv[3:] or ["arkernels-cuda", "flex"]
dev = torch.device("cuda")
case = next(c for c in bench.cases(dev, quick=False) if c.params["name"] == name and c.mode == mode)
x = bench._make_inputs(case)


def median_ms(fn, n=20, sync=True):
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return sorted(times)[n // 2]


bsa_ops = importlib.import_module("arkernels.ops.block_sparse_attention")  # the module, not the function
for provider in providers:
    # "+direct": the same provider with ops.block_sparse_attention.DIRECT_EAGER_BACKWARD on (A / B in one run).
    base, _, flag = provider.partition("+")
    bsa_ops.DIRECT_EAGER_BACKWARD = flag == "direct"
    call = bench._call(bench._provider_fn(base, case), x)
    for _ in range(5):
        call()
    wall, issue = median_ms(call), median_ms(call, sync=False)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events) / 1e3
    print(f"== {name} {mode} {case.shape} {provider}: wall {wall:.3f} ms a call (synchronised), host issue "
          f"{issue:.3f} ms, kernels {total:.3f} ms in {sum(e.count for e in events)} launches", flush=True)
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:12]:
        print(f"{e.self_device_time_total / 1e3:9.3f} ms {e.count:4d}x  {e.key[:140]}", flush=True)
    if os.environ.get("CPU_PROFILE") == "1":
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof_cpu:
            call()
            torch.cuda.synchronize()
        cpu = [e for e in prof_cpu.key_averages() if e.device_type == torch.autograd.DeviceType.CPU]
        print(f"-- CPU events of one call, by self time (total {sum(e.self_cpu_time_total for e in cpu) / 1e3:.3f} ms)")
        for e in sorted(cpu, key=lambda e: -e.self_cpu_time_total)[:25]:
            print(f"{e.self_cpu_time_total / 1e3:9.3f} ms {e.count:4d}x  {e.key[:120]}", flush=True)
    n_host = int(os.environ.get("HOST_PROFILE", "0"))
    if n_host:
        prof_host = cProfile.Profile()
        prof_host.enable()
        for _ in range(n_host):
            call()
        prof_host.disable()
        torch.cuda.synchronize()
        print(f"-- host functions over {n_host} calls (own time, then cumulative)", flush=True)
        stats = pstats.Stats(prof_host, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
