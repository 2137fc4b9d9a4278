"""Where the time of one selective_state_update call goes at the benchmark's headline shapes, on the GPU
machine: do_bench as the report times it (256 MB write flush before each call), the same calls replayed
from a CUDA graph (no host work inside the timing), the host time per call, and the kernels the profiler
sees in one call, for arkernels and the peer (mamba-ssm's Triton kernel, where it imports).
Usage (repo root, GPU machine): python scripts/ssu_timing.py [once mamba1|mamba2]  (once: three calls, for ncu)"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: bench/

import torch
import triton.testing
from torch.profiler import ProfilerActivity, profile

from bench.ops import bench_selective_state_update as ssu


def graph_of(fn):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def once(layout):
    """Three arkernels calls of one layout and nothing else (for ncu)."""
    gen = torch.Generator().manual_seed(0)
    case = next(c for c in ssu.cases("cuda", quick=True) if c.params["layout"] == layout)
    args = ssu._make_args(case, gen)
    op = ssu._provider_fn("arkernels-cuda", case)
    for _ in range(3):
        op(**args)
    torch.cuda.synchronize()


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "once":
        return once(sys.argv[2])
    gen = torch.Generator().manual_seed(0)
    for case in ssu.cases("cuda", quick=True):
        args = ssu._make_args(case, gen)
        for name in ("arkernels-cuda", ssu.PEER):
            try:
                op = ssu._provider_fn(name, case)
            except Exception as err:  # noqa: BLE001
                print(f"{case.params['layout']} {name}: not available ({err})")
                continue
            fn = lambda: op(**args)  # noqa: E731
            fn()
            torch.cuda.synchronize()
            bench_ms = triton.testing.do_bench(fn, warmup=20, rep=100, return_mode="median")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            host_us = (time.perf_counter() - t0) / 200 * 1e6
            torch.cuda.synchronize()
            graph = graph_of(fn)
            graph_ms = triton.testing.do_bench(graph.replay, warmup=20, rep=100, return_mode="median")
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            kernels = [(e.key, e.device_time_total) for e in prof.key_averages()
                       if e.device_type == torch.autograd.DeviceType.CUDA]
            print(f"{case.params['layout']:7s} {name:15s} do_bench {bench_ms * 1e3:7.1f} us | graph replay "
                  f"{graph_ms * 1e3:7.1f} us | host per call (no sync) {host_us:6.1f} us | kernels: "
                  + "; ".join(f"{k} {t:.1f} us" for k, t in kernels))


if __name__ == "__main__":
    main()
