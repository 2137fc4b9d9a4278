"""Where a Mamba-1 LM training step (bench/ops/bench_mamba_lm.py's case) spends its GPU time, per provider:
the torch profiler's top CUDA kernels of one step (after warm-up), and the step's total kernel time.
Usage (GPU machine, peer built as for the benchmark): python scripts/profile_mamba_lm.py [fwd|fwd+bwd] [top]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: bench/

import torch
from torch.profiler import ProfilerActivity, profile

from bench.ops import bench_mamba_lm as lm

mode = sys.argv[1] if len(sys.argv) > 1 else lm.TRAIN
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
dev = torch.device("cuda")
case = next(c for c in lm.cases(dev, quick=True) if c.mode == mode)
vocab = case.params["model"]["vocab_size"]
ids = torch.randint(0, vocab, case.shape, device=dev)
targets = torch.randint(0, vocab, case.shape, device=dev)
for name in lm.PROVIDERS:
    try:
        model = lm._build(case, name)
    except Exception as err:  # noqa: BLE001
        print(f"== {name}: not built ({type(err).__name__}: {err})")
        continue
    fn = lm._train_step(model, ids, targets, dev) if mode == lm.TRAIN else lm._forward(model, ids, dev)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events) / 1e3
    print(f"== {name} {mode}: {total:.2f} ms of kernels in one step, {sum(e.count for e in events)} launches")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"{e.self_device_time_total / 1e3:9.3f} ms {e.count:5d}x  {e.key[:150]}")
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
