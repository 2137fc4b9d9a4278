"""Median time of one callable, in milliseconds, after warm-up.

CUDA: ``triton.testing.do_bench`` (CUDA events around each call, median). do_bench zeroes a 256 MB buffer
before every timed call, which evicts the whole L2 (50 MB on an H100), so every call reads its inputs from
HBM whatever their size: no rotation of input sets is needed on CUDA (the headline and sweep tensors are
256 MB / 128 MB each anyway). Callables slower than SLOW_CALL_MS (the eager references) are timed by a
short loop of our own with the same flush, because do_bench calls anything at least 8 times.

CPU: perf_counter around each call, median of repeats after one warm-up call. Nothing flushes the CPU
caches, so callers build several input sets when a case's working set is smaller than twice the last-level
cache (:func:`input_sets`) and time :func:`rotating` over them.

Every timing aims at about BUDGET_MS (CPU: CPU_BUDGET_MS) of wall time, at most ~0.3 s for fast calls.
"""
from __future__ import annotations

import itertools
import math
import statistics
import time
from typing import Callable

import torch

WARMUP_MS = 20      # do_bench warm-up (ms of calls)
REP_MS = 80         # do_bench timed repetitions (ms of calls)
SLOW_CALL_MS = 20.0  # above this per call, time with a few calls of our own loop instead
BUDGET_MS = 250.0   # wall time aimed at per timing (CUDA)
CPU_BUDGET_MS = 150.0  # the same on CPU, where the report must stay short
L2_FLUSH_BYTES = 256 * 2**20


def time_ms(fn: Callable[[], object], device: torch.device | str) -> float:
    """Median milliseconds of ``fn()`` on `device` (its stream is synchronized around the calls)."""
    device = torch.device(device)
    if device.type == "cuda":
        return _time_cuda(fn, device)
    return _time_cpu(fn)


def _time_cpu(fn) -> float:
    """Repeats until CPU_BUDGET_MS has passed and at least 3 calls were timed (at most 200), or, for slow
    calls, until 4x that budget has passed (then 1-2 calls: enough for a reference that takes seconds)."""
    fn()  # warm-up: first-call costs (allocations, lazy init, compilation)
    budget_s = CPU_BUDGET_MS / 1e3
    times = []
    start = time.perf_counter()
    while len(times) < 200:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s and (len(times) >= 3 or elapsed >= 4 * budget_s):
            break
    return statistics.median(times) * 1e3


_flush_buffer: dict[int, torch.Tensor] = {}


def _flush_l2(device: torch.device) -> None:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _flush_buffer:
        _flush_buffer[index] = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    _flush_buffer[index].zero_()


def _time_cuda(fn, device: torch.device) -> float:
    with torch.cuda.device(device):
        fn()  # warm-up: JIT compilation, autotuning, allocator growth
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _flush_l2(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        estimate = start.elapsed_time(end)
        if estimate <= SLOW_CALL_MS:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, return_mode="median"))
        n = max(1, min(5, int(BUDGET_MS / estimate)))
        times = [estimate]
        for _ in range(n):
            _flush_l2(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)


def llc_bytes() -> int:
    """Size of the largest CPU cache (sysfs), or 32 MiB when it cannot be read."""
    best = 0
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        try:
            best = max(best, int(text.rstrip("KMGkmg")) * scale)
        except ValueError:
            pass
    return best or 32 * 2**20


def input_sets(working_set_bytes: int, device: torch.device | str, *, max_sets: int = 64,
               max_total_bytes: int = 1 << 30) -> int:
    """How many distinct input sets to rotate through so that a timed call does not find its inputs in
    cache: 1 on CUDA (the L2 is flushed before every timed call, see the module doc); on CPU enough sets
    to span twice the last-level cache, bounded by `max_sets` and `max_total_bytes`."""
    if torch.device(device).type == "cuda" or working_set_bytes <= 0:
        return 1
    wanted = math.ceil(2 * llc_bytes() / working_set_bytes)
    return max(1, min(wanted, max_sets, max_total_bytes // working_set_bytes))


def rotating(fns: list[Callable[[], object]]) -> Callable[[], object]:
    """One callable that calls the next of `fns` each time (round robin)."""
    if len(fns) == 1:
        return fns[0]
    cycle = itertools.cycle(fns)
    return lambda: next(cycle)()
