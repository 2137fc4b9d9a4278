"""Benchmark of arkernels.linear_scan (h[t] = a[t] * h[t-1] + b[t] along T of (B, C, T) tensors).

Providers: the log-depth reference (eager, and torch.compile'd), the arkernels backends, and the peer
accelerated-scan 0.3.1 (``accelerated_scan.scalar.scan``, Triton) where it is installed.

Cases, CUDA: the issue's headline (B8, C2048, T4096) fp32/bf16, a T sweep at constant B*C*T = 2^26
(T = 256 ... 65536, B = 8), and one odd shape (B3, C1000, T4097); each in "fwd" and "fwd+bwd"
(``torch.autograd.grad`` of gates and tokens for a fresh random output gradient). At the headline shape
also "fwd+bwd+acc": ``out.backward(g)`` into existing ``.grad`` tensors, which autograd accumulates with a
separate read-add-write of each gradient (how a training loop calls it; the anchors' peer fwd+bwd times
match this mode). CPU: the same structure at 2^17 elements.

Bytes per call (the minimum a kernel must move): fwd reads a, b and writes h (3 tensors); fwd+bwd adds the
backward's reads of a, h, g and writes of da, db (8 tensors); fwd+bwd+acc adds autograd's accumulation,
read .grad + read new + write .grad for both gradients (14 tensors). A scan does ~2 flops per element,
so no TFLOP/s is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.common import ms, record_error, run_providers
from bench.registry import MODES, Case, Row

from bench.timing import input_sets, rotating, time_ms

ACC = "fwd+bwd+acc"  # headline only: backward() into existing .grad (accumulated by autograd)
_TENSORS_MOVED = {"fwd": 3, "fwd+bwd": 8, ACC: 14}

OP = "linear_scan"
PEER = "accelerated-scan"
PEER_PACKAGE = "accelerated-scan"  # distribution name, for the version in the report header
SWEEP_AXIS = "T"

PROVIDERS = ("reference", "compiled-reference", "arkernels-cuda", "arkernels-triton", "arkernels-cpu", PEER)
_BACKEND = {"arkernels-cuda": "cuda", "arkernels-triton": "triton", "arkernels-cpu": "cpu"}
DTYPES = (torch.float32, torch.bfloat16)
REFERENCE_MAX_S = 2.0  # the eager reference is not timed where one call would take longer than this

# (B, C, T) shapes per device: the headline, the T sweep (constant number of elements), one odd shape.
SHAPES = {
    "cuda": {"headline": (8, 2048, 4096), "elements": 2**26, "B": 8, "odd": (3, 1000, 4097),
             "sweep_T": (256, 1024, 4096, 16384, 65536)},
    "cpu": {"headline": (2, 64, 1024), "elements": 2**17, "B": 2, "odd": (3, 10, 1001),
            "sweep_T": (256, 1024, 4096, 16384, 65536)},
}


# ---------------------------------------------------------------- providers

_peer_cache: list = []


def _peer():
    """(accelerated_scan.scalar.scan or None, why it is missing)."""
    if not _peer_cache:
        try:
            from accelerated_scan.scalar import scan

            _peer_cache.append((scan, None))
        except Exception as err:  # noqa: BLE001  (ImportError, or triton failing to import)
            _peer_cache.append((None, f"not importable ({type(err).__name__}: {err})"))
    return _peer_cache[0]


def providers(device) -> dict[str, str | None]:
    """provider -> None when it can run on `device`, else the reason it cannot."""
    import arkernels
    from arkernels.ops import _backends

    dev = torch.device(device)
    out: dict[str, str | None] = {"reference": None, "compiled-reference": None}
    for name, backend in _BACKEND.items():
        if backend == "triton" and dev.type != "cuda":
            out[name] = "needs a CUDA device (the Triton interpreter on CPU is for tests, not timings)"
            continue
        reason = _backends.unavailable_reason(OP, backend, dev)
        if reason is None and backend in ("cuda", "cpu") and not arkernels.native_available():
            reason = "arkernels._C did not load"
        out[name] = reason
    scan, why = _peer()
    out[PEER] = "CUDA only" if dev.type != "cuda" else why
    return out


def _provider_fn(name: str, case: Case):
    """The callable (gates, tokens) -> states of provider `name`."""
    if name == "reference":
        from arkernels.reference import linear_scan_ref_logdepth

        return linear_scan_ref_logdepth
    if name == "compiled-reference":
        return _compiled_reference(case.dtype, case.mode)
    if name in _BACKEND:
        import arkernels

        backend = _BACKEND[name]
        return lambda a, b: arkernels.linear_scan(a, b, backend=backend)
    if name == PEER:
        scan, why = _peer()
        if scan is None:
            raise RuntimeError(f"{PEER} {why}")
        return scan
    raise ValueError(f"unknown provider {name!r}")


_compiled: dict = {}


def _compiled_reference(dtype, mode):
    """torch.compile of the log-depth reference, one per (dtype, mode): dynamic=False, fullgraph=True so
    that a graph break is an error (recorded in the row) rather than a silently partial compile."""
    key = (dtype, mode)
    if key not in _compiled:
        import torch._dynamo

        from arkernels.reference import linear_scan_ref_logdepth

        # Every compiled copy shares the reference's code object, whose cache holds one entry per
        # dtype/mode/shape; past the limit dynamo would silently run eager.
        for attr in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, attr):
                setattr(torch._dynamo.config, attr, max(64, getattr(torch._dynamo.config, attr)))
        _compiled[key] = torch.compile(linear_scan_ref_logdepth, dynamic=False, fullgraph=True)
    return _compiled[key]


# Seen on the H100 (torch 2.11, triton 3.6): accelerated-scan's backward ended in an illegal memory
# access, which breaks the CUDA context for the rest of the process, in three report runs: T=256
# fp32, T=256 bf16, T=1024 bf16 (single calls in isolation passed). T=4096 never failed. Not run
# below that, so that the report finishes.
PEER_BWD_MIN_T = 4096


def _skip_reason(name: str, case: Case) -> str | None:
    if name == PEER and case.mode != "fwd" and case.shape[-1] < PEER_BWD_MIN_T and case.device.startswith("cuda"):
        return ("not run: its backward crashed the CUDA context (illegal memory access) at T=256 and "
                "T=1024 in earlier runs (bench/NOTES.md)")
    if name == "reference":
        estimate = _reference_seconds(case)
        if estimate > REFERENCE_MAX_S:
            return f"too slow (~{estimate:.0f} s per call predicted, limit {REFERENCE_MAX_S:.0f} s)"
    if name == "compiled-reference" and "headline" not in case.tags:
        return "compiled at the headline shape only (each shape recompiles: time budget)"
    if name == "compiled-reference" and case.mode == ACC:
        return "not compiled for fwd+bwd+acc (the fwd+bwd graph plus autograd's accumulation; compile time)"
    if name == "compiled-reference" and not case.device.startswith("cuda") and case.dtype != torch.float32:
        return "on the CPU compiled for fp32 only (compile time)"
    return None


def _reference_seconds(case: Case) -> float:
    """Rough time of one eager log-depth reference call: ~14 passes over fp32 tensors per doubling round
    (x3 with the backward), plus per-op launch costs."""
    B, C, T = case.shape
    rounds = max(1, math.ceil(math.log2(max(T, 2))))
    factor = 1 if case.mode == "fwd" else 3
    cuda = case.device.startswith("cuda")
    bandwidth, per_op = (1.5e12, 10e-6) if cuda else (4e9, 20e-6)
    return B * C * T * 4 * 14 * rounds * factor / bandwidth + 10 * rounds * factor * per_op


# ---------------------------------------------------------------- cases

def cases(device, quick: bool) -> list[Case]:
    dev = torch.device(device)
    cfg = SHAPES["cuda" if dev.type == "cuda" else "cpu"]
    name = str(dev)
    out: list[Case] = []

    def add(shape, dtype, mode, tags, x=None):
        B, C, T = shape
        nbytes = B * C * T * torch.empty((), dtype=dtype).element_size() * _TENSORS_MOVED[mode]
        out.append(Case(op=OP, mode=mode, dtype=dtype, shape=shape, device=name, bytes=nbytes, flops=None,
                        x=x, tags=tags))

    head = cfg["headline"]
    for dtype in DTYPES:  # the headline first: a report cut short still has it
        for mode in MODES:
            add(head, dtype, mode, ("headline", "sweep"), x=head[2])
        add(head, dtype, ACC, ("headline",))
    if quick:
        return out
    for dtype in DTYPES:
        for mode in MODES:
            add(cfg["odd"], dtype, mode, ("odd",))
    for dtype in DTYPES:
        for mode in MODES:
            for T in cfg["sweep_T"]:
                C = cfg["elements"] // (cfg["B"] * T)
                if (cfg["B"], C, T) != tuple(head):
                    add((cfg["B"], C, T), dtype, mode, ("sweep",), x=T)
    return out


# ---------------------------------------------------------------- running one case

@dataclass
class _Inputs:
    a: torch.Tensor
    b: torch.Tensor
    g: torch.Tensor | None
    accumulate: bool = False


def _make_inputs(case: Case) -> _Inputs:
    dev = torch.device(case.device)
    grad = case.mode != "fwd"
    # gates in [0.5, 1): long memory without overflow; never zeros.
    a = (torch.rand(case.shape, device=dev) * 0.5 + 0.5).to(case.dtype)
    b = torch.randn(case.shape, device=dev).to(case.dtype)
    g = torch.randn(case.shape, device=dev).to(case.dtype) if grad else None
    if grad:
        a.requires_grad_()
        b.requires_grad_()
    if case.mode == ACC:  # existing gradients, as in a training step (autograd adds into them)
        a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
    return _Inputs(a, b, g, accumulate=case.mode == ACC)


def _call(fn, x: _Inputs):
    if x.g is None:
        return lambda: fn(x.a, x.b)
    if x.accumulate:
        return lambda: fn(x.a, x.b).backward(x.g)
    return lambda: torch.autograd.grad(fn(x.a, x.b), (x.a, x.b), x.g)


def _check_rows(rows: int) -> list[int]:
    """The rows compared with the float64 oracle: the first two and the last."""
    return sorted({0, min(1, rows - 1), rows - 1})


def _oracle(x: _Inputs, case: Case) -> list[torch.Tensor]:
    """float64 reference of the checked rows: [h] or [h, da, db]."""
    from arkernels.reference import linear_scan_ref_logdepth

    T = case.shape[-1]
    idx = _check_rows(math.prod(case.shape[:-1]))
    a64 = x.a.detach().reshape(-1, T)[idx].to(torch.float64)
    b64 = x.b.detach().reshape(-1, T)[idx].to(torch.float64)
    if x.g is None:
        return [linear_scan_ref_logdepth(a64, b64)]
    a64.requires_grad_()
    b64.requires_grad_()
    h64 = linear_scan_ref_logdepth(a64, b64)
    g64 = x.g.reshape(-1, T)[idx].to(torch.float64)
    da64, db64 = torch.autograd.grad(h64, (a64, b64), g64)
    return [h64.detach(), da64, db64]


def _check(name: str, fn, x: _Inputs, oracle: list[torch.Tensor], case: Case) -> float:
    """Max relative error of the checked rows against the float64 oracle, on the full inputs; new outputs
    are NaN-poisoned first so that an element a kernel does not write fails."""
    import contextlib

    from arkernels._outputs import poisoned_outputs
    from arkernels.testing import relative_error

    T = case.shape[-1]
    idx = _check_rows(math.prod(case.shape[:-1]))
    if torch.device(case.device).type == "cuda":
        # Leave NaN-filled blocks of the output size in the caching allocator, so that an output block
        # reused from an earlier provider cannot hide unwritten elements (covers the peer too).
        blocks = [torch.full(case.shape, float("nan"), dtype=case.dtype, device=case.device)
                  for _ in range(1 if x.g is None else 3)]
        del blocks
    with poisoned_outputs() if name in _BACKEND else contextlib.nullcontext():
        out = fn(x.a, x.b)
        outs = [out] if x.g is None else [out, *torch.autograd.grad(out, (x.a, x.b), x.g)]
    return max(relative_error(o.detach().reshape(-1, T)[idx], r) for o, r in zip(outs, oracle))


def _tolerance(dtype) -> float:
    from arkernels.testing.numerics import REL_TOL

    return REL_TOL[dtype]



def run(case: Case, providers: list[str]) -> list[Row]:
    torch.manual_seed(0)

    def prepare():
        sets = [_make_inputs(case) for _ in range(input_sets(case.bytes, torch.device(case.device)))]
        return sets, _oracle(sets[0], case)

    rows = run_providers(case, providers, prepare,
                         lambda name, prepared, row: _run_provider(name, case, *prepared, row))
    _flag_low_precision_error(rows, case)
    return rows


def _flag_low_precision_error(rows: list[Row], case: Case) -> None:
    """ARCHITECTURE.md: in low precision a fast kernel may be at most 2x worse than the reference run in
    that precision. Rows past that keep their status (they pass the dtype's bound) but say so."""
    if case.dtype not in (torch.bfloat16, torch.float16):
        return
    ref = next((r for r in rows if r.provider == "reference" and r.rel_err is not None), None)
    if ref is None or not ref.rel_err:
        return
    for r in rows:
        if r.provider != "reference" and r.rel_err is not None and r.status == "ok" and r.rel_err > 2 * ref.rel_err:
            r.note = f"rel err {r.rel_err / ref.rel_err:.1f}x the reference's (contract: <= 2x)"


def _run_provider(name: str, case: Case, sets: list[_Inputs], oracle, row: Row) -> None:
    import time

    skip = _skip_reason(name, case)
    if skip is not None:
        row.status, row.note = "skipped", skip
        return
    fn = _provider_fn(name, case)
    row.tol = _tolerance(case.dtype)
    t0 = time.perf_counter()
    record_error(row, _check(name, fn, sets[0], oracle, case), row.tol)
    first_s = time.perf_counter() - t0
    if name == "reference" and first_s > REFERENCE_MAX_S:
        row.status = "skipped" if row.status == "ok" else row.status
        row.note = (row.note + "; " if row.note else "") + f"too slow to time (check took {first_s:.1f} s)"
        return
    row.time_ms = time_ms(rotating([_call(fn, x) for x in sets]), case.device)
    row.input_sets = len(sets)


# ---------------------------------------------------------------- headline

TARGETS = {"fwd_frac_copy": 0.90, "fwd_speedup": 1.0, "fwdbwd_speedup": 1.4}


def headline(rows: list[Row], ceilings) -> list[str]:
    head = [r for r in rows if r.op == OP and "headline" in r.tags]
    if not head:
        return []
    shape = head[0].shape
    on_gpu = head[0].device.startswith("cuda")
    lines = [f"## Headline: linear_scan {shape} (B x C x T)", ""]
    lines.append(f"Targets (issue 2, on the H100): forward >= {TARGETS['fwd_frac_copy']:.0%} of the copy bandwidth "
                 f"and >= {TARGETS['fwd_speedup']:.1f}x {PEER}; forward+backward >= {TARGETS['fwdbwd_speedup']:.1f}x "
                 f"{PEER}. Graded: fwd, and fwd+bwd (`torch.autograd.grad`). Shown, not graded: {ACC} "
                 f"(`out.backward(g)` into existing `.grad`, accumulated by autograd).")
    if not on_gpu:
        lines.append("This is a CPU run: the targets are GPU targets and the peer does not run on the CPU; "
                     "nothing below is a GPU measurement.")
    lines.append("")
    lines.append(f"| dtype | provider | fwd ms | fwd % of copy | fwd vs peer | fwd+bwd ms | fwd+bwd vs peer | "
                 f"{ACC} ms (vs peer) | peer fwd / fwd+bwd / {ACC} ms | verdict |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    by = {(r.dtype, r.provider, r.mode): r for r in head}
    context = []
    for dtype in sorted({r.dtype for r in head}, key=lambda d: (d != "fp32", d)):
        peer_rows = [by.get((dtype, PEER, mode)) for mode in ("fwd", "fwd+bwd", ACC)]
        peer_txt = " / ".join(ms(p) for p in peer_rows)
        for provider in [p for p in PROVIDERS if p.startswith("arkernels-")]:
            fwd, fb, acc = (by.get((dtype, provider, mode)) for mode in ("fwd", "fwd+bwd", ACC))
            if fwd is None and fb is None:
                continue
            checks = [
                _judge(fwd, fwd.frac_copy if fwd else None, TARGETS["fwd_frac_copy"], "{:.0%}", on_gpu),
                _judge(fwd, fwd.speedup if fwd else None, TARGETS["fwd_speedup"], "{:.2f}x", on_gpu),
                _judge(fb, fb.speedup if fb else None, TARGETS["fwdbwd_speedup"], "{:.2f}x", on_gpu),
            ]
            if not on_gpu:
                verdict = "n/a (CPU run)"
            elif all(c.endswith("PASS") for c in checks):
                verdict = "**PASS**"
            else:
                verdict = "**MISS**"
            acc_txt = ms(acc) + (f" ({acc.speedup:.2f}x)" if acc is not None and acc.speedup else "")
            lines.append(f"| {dtype} | {provider} | {ms(fwd)} | {checks[0]} | {checks[1]} | {ms(fb)} | "
                         f"{checks[2]} | {acc_txt} | {peer_txt} | {verdict} |")
        peer_fb = peer_rows[1]
        if peer_fb is not None and peer_fb.frac_copy:
            context.append(f"{dtype}: the peer's fwd+bwd moves its {_TENSORS_MOVED['fwd+bwd']} tensors at "
                           f"{peer_fb.frac_copy:.0%} of the copy bandwidth, so {TARGETS['fwdbwd_speedup']:.1f}x "
                           f"needs {TARGETS['fwdbwd_speedup'] * peer_fb.frac_copy:.0%} of it.")
    if context:
        lines += [""] + context
    return lines


def _judge(row: Row | None, value: float | None, target: float, fmt: str, graded: bool) -> str:
    """The value against its target: "97% PASS", "0.93x MISS"; without a grade off the GPU."""
    miss = " MISS" if graded else ""
    if row is None:
        return "not run" + miss
    if row.status != "ok":
        return row.status + miss
    if value is None:
        return "not measured" + miss
    return fmt.format(value) + ((" PASS" if value >= target else " MISS") if graded else "")
