"""CPU forward of block_sparse_attention: the C API's C++ kernel (arkernels::block_sparse_attention_fwd) against
the PyTorch cpu op on the same layout (2, 4, 1000, 64) fp32, median of 5.

    python scripts/block_sparse_attention_cpu_timing.py
"""
import time, torch, arkernels
from arkernels import masks
from arkernels.ops.block_sparse_attention import _layout_args
torch.manual_seed(0)
for name, m in [("causal", masks.causal(1000)), ("sliding 256", masks.sliding_window(256, 1000))]:
    q, k, v = (torch.randn(2, 4, 1000, 64) for _ in range(3))
    args = _layout_args(m.layout(128, 128))
    ops = {"native C++": torch.ops.arkernels.block_sparse_attention_fwd, "PyTorch cpu op": torch.ops.arkernels.block_sparse_attention_cpu}
    for label, op in ops.items():
        op(q, k, v, *args, 0.125)
        ts = []
        for _ in range(5):
            t0 = time.perf_counter(); op(q, k, v, *args, 0.125); ts.append(time.perf_counter() - t0)
        print(f"{name:12s} {label:15s} median {sorted(ts)[2]*1e3:7.1f} ms")
