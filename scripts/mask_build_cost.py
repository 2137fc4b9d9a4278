"""Cost of building 1M-token masks and their tile layouts (arkernels.masks), as a Markdown table.

    .venv/bin/python scripts/mask_build_cost.py [--repeats 9] [--threads N]

Each (mask, tiling) runs in a fresh subprocess, which builds the mask and its layout (forward and
backward runs) once ("first", cold memory: includes the page faults of fresh buffers), then --repeats
more times, dropping the previous one first ("median": steady state, the allocator reuses memory).
Memory: "peak RSS" is the rise of the process's resident high-water mark (VmHWM in /proc/self/status,
reset through /proc/self/clear_refs just before the first build), so it counts every torch buffer,
temporaries included; "kept" is the total size of the tensors the mask and its layout hold.
Target (issue 4): < 10 ms and < 100 MB for VAR, SCAM and document masks at 128 x 128.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

L_TARGET = 1 << 20


def _cases():
    import torch

    from arkernels import masks

    # VAR: scales pn = 1..k with sum pn^2 closest to 2^20 (k = 146: 1,048,061 tokens).
    k = min(range(1, 400), key=lambda k: abs(k * (k + 1) * (2 * k + 1) // 6 - L_TARGET))
    sizes = torch.arange(1, k + 1) ** 2
    var_bounds = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)])
    # Documents: 1000 random lengths summing to 2^20, causal inside each.
    g = torch.Generator().manual_seed(0)
    cuts = torch.sort(torch.randperm(L_TARGET - 1, generator=g)[:999] + 1).values
    cu = torch.cat([torch.tensor([0]), cuts, torch.tensor([L_TARGET])])
    return {
        "VAR block_causal": lambda: masks.block_causal(var_bounds),
        "SCAM 256 x 2048": lambda: masks.skip_causal(256, 2048),
        "document 1000 + causal": lambda: masks.document(cu, masks.causal(L_TARGET)),
        "causal": lambda: masks.causal(L_TARGET),
        "sliding_window 4096": lambda: masks.sliding_window(4096, L_TARGET),
    }


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _tensor_bytes(obj) -> int:
    import torch

    seen, total = set(), 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            key = (o.untyped_storage().data_ptr(), o.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                total += key[1]
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif hasattr(o, "__dict__") or hasattr(o, "__dataclass_fields__"):
            stack.extend(getattr(o, f) for f in (getattr(o, "__dataclass_fields__", None) or vars(o)))
    return total


def run_one(case: str, block: int, repeats: int, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    build = _cases()[case]
    from arkernels import masks

    # First-call costs (imports, op dispatch set-up) out of the way with small masks of every kind, so that
    # "first" measures cold memory, not Python warm-up.
    for small in (masks.block_causal([0, 1, 5, 300]), masks.skip_causal(3, 70), masks.causal(300),
                  masks.document([0, 100, 300], masks.causal(300)), masks.sliding_window(7, 300)):
        small.layout(block, block)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    hwm0 = _hwm_kib()
    t = time.perf_counter()
    m = build()
    lay = m.layout(block, block)
    first = time.perf_counter() - t
    peak = _hwm_kib() - hwm0
    kept = _tensor_bytes([m.rule if hasattr(m, "rule") else None, lay])
    counts = lay.tile_counts()
    info = dict(case=case, block=block, L=m.L, first_ms=first * 1e3, peak_mib=peak / 1024, kept_mib=kept / 2**20,
                q_runs=int(lay.q_runs.shape[0]), k_runs=int(lay.k_runs.shape[0]), **counts)
    times = []
    for _ in range(repeats):
        del m, lay
        t = time.perf_counter()
        m = build()
        lay = m.layout(block, block)
        times.append(time.perf_counter() - t)
    info["median_ms"] = statistics.median(times) * 1e3
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads set before building (default: torch's own; builders and layouts run "
                         "on one thread anyway, see arkernels.masks.mask.one_thread)")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "BLOCK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.repeats, args.threads)))
        return
    import torch

    rows = []
    for case in _cases():
        for block in (128, 64):
            out = subprocess.run([sys.executable, __file__, "--one", case, str(block), "--repeats", str(args.repeats),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, torch threads {threads} (builds run on 1: one_thread), "
          f"median of {args.repeats} builds after a first one\n")
    print("| mask | L | tile | first ms | median ms | peak RSS MiB | kept MiB | full | partial | empty | q runs | k runs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['L']} | {r['block']} | {r['first_ms']:.1f} | {r['median_ms']:.1f} | {r['peak_mib']:.1f} | "
              f"{r['kept_mib']:.1f} | {r['full']} | {r['partial']} | {r['empty']} | {r['q_runs']} | {r['k_runs']} |")


if __name__ == "__main__":
    main()
