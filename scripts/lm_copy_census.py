"""Census of the copy / cast / concat ops of one Mamba-1 LM training step (bench/ops/bench_mamba_lm.py's step:
float32 parameters, autocast(bfloat16), forward + cross-entropy + backward), taken on the CPU with the torch
profiler at a small batch and length and scaled to the benchmark's shape (batch 8 x 2048 tokens, 24 layers).

Each row: launches per step, bytes moved per step at the real shape (read + write), the op with the ops it
ran inside, its shapes / dtypes, and where it comes from: the Python line for forward ops; for backward ops
the autograd node and the Python line of the forward op that made it (matched by sequence number).
Rows marked "cpu-only" come from CPU kernels that copy where CUDA does not (bmm making expanded or
transposed operands contiguous, the composite rms_norm, mixed-dtype add/sum casting first): they are listed
for completeness and left out of the CUDA totals.

Usage (CPU): python scripts/lm_copy_census.py
"""
from __future__ import annotations

import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from arkernels.models import Mamba1Config, Mamba1LMHeadModel

BATCH, L = 3, 40  # distinct from every width (768, 1536, 3072, 48, 80, 16, 4): shapes scale unambiguously
REAL_BATCH, REAL_L, REAL_LAYERS = 8, 2048, 24
ESIZE = {"float": 4, "c10::BFloat16": 2, "double": 8, "long int": 8, "c10::Half": 2, "bool": 1, "int": 4}
# What launches a copy-like kernel: the copies themselves, concatenations, and in backward the fills of
# zero buffers and the accumulations (add_) and batch sums that gradient bookkeeping adds.
COPY = {"aten::copy_", "aten::cat", "aten::stack"}
BWD_EXTRA = {"aten::fill_", "aten::add_", "aten::sum"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/"
PYFRAME = re.compile(r"^(.*\.py)\((\d+)\): (.*)$")


def scale(shape):
    f = 1.0
    for d in shape:
        if d == BATCH:
            f *= REAL_BATCH / BATCH
        elif d == L:
            f *= REAL_L / L
        elif d == BATCH * L:
            f *= REAL_BATCH * REAL_L / (BATCH * L)
    return f


def nbytes(shape, dtype):
    n = 1
    for d in shape:
        n *= d
    return n * ESIZE.get(dtype, 4) * scale(shape)


def source(e):
    """The Python frames of the model (or the step) above event e, outermost first: file:line function, where
    the line is the function's def line (the profiler's Python tracer names frames so)."""
    frames, p = [], e.cpu_parent
    while p is not None:
        m = PYFRAME.match(p.name)
        if m and ("arkernels/models" in m.group(1) or "lm_copy_census" in m.group(1)):
            f = m.group(1).replace(ROOT, "").split("python/arkernels/")[-1].replace("models/", "")
            frames.append(f"{f}:{m.group(2)} {m.group(3)}")
            if len(frames) == 2:
                break
        p = p.cpu_parent
    return " < ".join(frames) if frames else "?"


def aten_chain(e):
    names, p = [], e.cpu_parent
    while p is not None and p.name.startswith("aten::"):
        names.append(p.name.replace("aten::", ""))
        p = p.cpu_parent
    return "/".join(reversed(names))


def no_kernel(name, chain):
    # baddbmm_ "copies" self into its in-place result first: copy_ of a tensor onto itself returns at once
    return name == "aten::copy_" and chain == "baddbmm_"


def cpu_only(name, chain, node, where):
    if {"bmm", "baddbmm_"} & set(chain.split("/")):
        return True  # CPU bmm makes expanded / transposed operands contiguous; cuBLAS reads them in place
    if "rms_norm" in chain or node in ("PowBackward0", "MeanBackward1", "RsqrtBackward0") or (
            node == "MulBackward0" and f"_lm.py:{_RMS_LINE} " in where and name != "aten::add_"):
        # composite rms_norm on the CPU; one fused kernel each way on CUDA (an add_ there is the residual
        # gradient's accumulation, which CUDA does too)
        return True
    if name == "aten::fill_" and chain == "sum":
        return True  # the CPU reduction zero-fills its output first
    if name == "aten::copy_" and chain.split("/")[0] in ("add", "sum", "mul", "div") and "to" in chain:
        return True  # CPU casts a mixed-dtype operand first; CUDA casts inside the kernel
    return False


def _rms_line():
    import inspect

    from arkernels.models import _lm

    return inspect.getsourcelines(_lm.RMSNorm.forward)[1]  # the profiler names a frame by its def line


_RMS_LINE = _rms_line()


def collect(n_layer):
    torch.manual_seed(0)
    cfg = Mamba1Config(d_model=768, n_layer=n_layer, vocab_size=50280, d_state=16, expand=2)
    model = Mamba1LMHeadModel(cfg, impl="fast")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (BATCH, L), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (BATCH, L), generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()

    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as prof:
        step()
    events = prof.events()
    fwd_src = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::") and not _in_backward(e):
            # a custom autograd Function's forward is recorded under its class name
            fwd_src.setdefault(e.sequence_nr, (e.name.replace("aten::", ""), source(e)))

    rows = collections.OrderedDict()
    for e in events:
        node = _in_backward(e)
        if e.name not in COPY and not (node and e.name in BWD_EXTRA) or no_kernel(e.name, aten_chain(e)):
            continue
        chain = aten_chain(e)
        if node:
            op, src = fwd_src.get(node[1], ("?", "?"))
            where = f"bwd {node[0]} <- {op} @ {src}"
            node = node[0]
        else:
            where = "fwd @ " + source(e)
        shapes = [tuple(s) for s in e.input_shapes]
        dtypes = list(e.input_dtypes)
        if e.name in ("aten::cat", "aten::stack"):
            # the list input is not recorded with its shapes: read + write of the output, recorded by the caller
            b = float("nan")
        elif e.name == "aten::copy_":
            b = nbytes(shapes[0], dtypes[0]) + nbytes(shapes[1], dtypes[1])
        elif e.name == "aten::add_":
            b = 2 * nbytes(shapes[0], dtypes[0]) + nbytes(shapes[1], dtypes[1])
        elif e.name == "aten::sum":
            out_dtype = dtypes[1] if len(shapes) > 1 and shapes[1] else dtypes[0]  # sum(dtype=, out=)
            b = nbytes(shapes[0], dtypes[0]) + nbytes(shapes[0][1:], out_dtype)
        else:
            b = nbytes(shapes[0], dtypes[0])
        shp = ", ".join("x".join(map(str, s)) for s in shapes if s)
        dts = ",".join(d.replace("c10::BFloat16", "bf16").replace("float", "f32") for d, s in zip(dtypes, shapes) if s)
        key = (e.name.replace("aten::", ""), chain, shp, dts, where, cpu_only(e.name, chain, node or "", where))
        r = rows.setdefault(key, [0, 0.0])
        r[0] += 1
        r[1] += b
    return rows


def _in_backward(e):
    """(autograd node, its sequence number) when e runs inside a backward node, else None."""
    p = e
    while p is not None:
        if p.name.startswith("autograd::engine::evaluate_function: "):
            return p.name.split(": ", 1)[1], p.sequence_nr
        p = p.cpu_parent
    return None


def main():
    # Two depths, extrapolated linearly to 24 layers: per-layer rows and the rest separate themselves (the
    # first block has no residual add, so counting per layer by source line would be off by one).
    r2, r3 = collect(2), collect(3)
    out = []
    for key in dict.fromkeys(list(r3) + list(r2)):
        (n2, b2), (n3, b3) = r2.get(key, (0, 0.0)), r3.get(key, (0, 0.0))
        k = REAL_LAYERS - 2
        name, chain, shp, dts, where, cpu = key
        out.append((n2 + (n3 - n2) * k, b2 + (b3 - b2) * k, name, chain, shp, dts, where, cpu))
    out.sort(key=lambda r: (r[7], -(r[1] if r[1] == r[1] else 0)))
    tot = collections.Counter()
    print(f"{'n/step':>6} {'MiB/step':>9}  op (inside)  shapes  dtypes  source")
    for n, b, name, chain, shp, dts, where, cpu in out:
        tag = "cpu-only " if cpu else ""
        print(f"{n:6.0f} {b / 2**20:9.1f}  {tag}{name} ({chain})  [{shp}]  [{dts}]  {where}")
        if not cpu:
            tot["n"] += n
            tot["b"] += b if b == b else 0
    print(f"CUDA-relevant total: {tot['n']:.0f} ops, {tot['b'] / 2**30:.2f} GiB per step at batch {REAL_BATCH} x "
          f"{REAL_L}, {REAL_LAYERS} layers (extrapolated from 2 and 3)")


if __name__ == "__main__":
    main()
