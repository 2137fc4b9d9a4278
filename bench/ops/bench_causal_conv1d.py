"""Benchmark of arkernels.causal_conv1d (causal depthwise conv, width 4, silu, bias, over (B, D, L)) and
of the decode step arkernels.causal_conv1d_update.

Providers: "reference" = ``F.conv1d(x, w[:, None], b, padding=W-1, groups=D)[..., :L]`` + silu (cuDNN on
the GPU: what a PyTorch model runs without this library), "compiled-reference" = ``torch.compile`` of
arkernels' reference (W shifted multiply-adds, fused by inductor), the arkernels backends, and the peer
Dao-AILab causal-conv1d (``causal_conv1d_fn`` / ``causal_conv1d_update``) where it is installed. For the
update, "reference" is arkernels' reference update (gather, conv, scatter).

Cases, CUDA: (8, 1536, 2048) and (4, 4096, 4096) (B x D x L; Mamba-130m/-1.4b-like widths), bf16 and
fp32, "fwd" and "fwd+bwd" (``torch.autograd.grad`` of x, weight and bias for a fresh random output
gradient); weights and bias fp32 (as with mixed precision); then the decode step at (64, 4096), width 4,
one token, state_len 3 (mode "update"); then an L sweep at constant B*D*L = 2^25 (bf16). CPU: small
shapes of the same structure.

Bytes per call (the minimum a kernel must move; N = B*D*L elements): fwd reads x and writes out (2N);
fwd+bwd adds the backward's reads of x and grad_out and its write of dx (5N in all; weights and partial
sums are negligible). Update: reads x and the last W-1 state entries, writes out and the whole state row:
B*D*(2 + (W-1) + state_len) elements.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.common import ms, record_error, run_providers
from bench.registry import MODES, Case, Row
from bench.timing import input_sets, rotating, time_ms

OP = "causal_conv1d"
PEER = "causal-conv1d"
PEER_PACKAGE = "causal-conv1d"  # distribution name, for the version in the report header
SWEEP_AXIS = "L"
UPDATE = "update"  # mode of the decode-step cases

PROVIDERS = ("reference", "compiled-reference", "arkernels-cuda", "arkernels-cpu", PEER)
_BACKEND = {"arkernels-cuda": "cuda", "arkernels-cpu": "cpu"}
WIDTH = 4
_ELEMENTS_MOVED = {"fwd": 2, "fwd+bwd": 5}

SHAPES = {
    "cuda": {"headline": ((8, 1536, 2048), (4, 4096, 4096)), "update": (64, 4096), "elements": 2**25, "B": 8,
             "sweep_L": (128, 512, 8192, 32768)},
    "cpu": {"headline": ((2, 64, 1024), (1, 128, 2048)), "update": (8, 256), "elements": 2**17, "B": 2,
            "sweep_L": (128, 4096)},
}
DTYPES = (torch.bfloat16, torch.float32)


# ---------------------------------------------------------------- providers

_peer_cache: list = []


def _peer():
    """((causal_conv1d_fn, causal_conv1d_update) or None, why it is missing)."""
    if not _peer_cache:
        try:
            from causal_conv1d import causal_conv1d_fn, causal_conv1d_update

            _peer_cache.append(((causal_conv1d_fn, causal_conv1d_update), None))
        except Exception as err:  # noqa: BLE001  (ImportError, or a CUDA extension failing to load)
            _peer_cache.append((None, f"not importable ({type(err).__name__}: {err})"))
    return _peer_cache[0]


def providers(device) -> dict[str, str | None]:
    """provider -> None when it can run on `device`, else the reason it cannot."""
    import arkernels
    from arkernels.ops import _backends

    dev = torch.device(device)
    out: dict[str, str | None] = {"reference": None, "compiled-reference": None}
    for name, backend in _BACKEND.items():
        reason = _backends.unavailable_reason(OP, backend, dev)
        if reason is None and not arkernels.native_available():
            reason = "arkernels._C did not load"
        out[name] = reason
    fns, why = _peer()
    out[PEER] = "CUDA only" if dev.type != "cuda" else why
    return out


def _f_conv1d(x, w, b):
    # Parameters cast to x's dtype, as autocast does with fp32 parameters and bf16 activations.
    w, b = w.to(x.dtype), b.to(x.dtype)
    return F.silu(F.conv1d(x, w.unsqueeze(1), b, padding=w.shape[1] - 1, groups=x.shape[1])[..., :x.shape[-1]])


_compiled: dict = {}


def _compiled_reference(dtype, mode):
    """torch.compile of the reference, one per (dtype, mode); fullgraph=True so that a graph break is an
    error (recorded in the row) rather than a silently partial compile."""
    key = (dtype, mode)
    if key not in _compiled:
        import torch._dynamo

        from arkernels.reference import causal_conv1d_ref

        for attr in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, attr):
                setattr(torch._dynamo.config, attr, max(64, getattr(torch._dynamo.config, attr)))
        fn = torch.compile(causal_conv1d_ref, dynamic=False, fullgraph=True)
        _compiled[key] = lambda x, w, b: fn(x, w, b, activation="silu")
    return _compiled[key]


def _conv_fn(name: str, case: Case):
    """The callable (x, w, b) -> out of provider `name`."""
    if name == "reference":
        return _f_conv1d
    if name == "compiled-reference":
        return _compiled_reference(case.dtype, case.mode)
    if name in _BACKEND:
        import arkernels

        backend = _BACKEND[name]
        return lambda x, w, b: arkernels.causal_conv1d(x, w, b, activation="silu", backend=backend)
    if name == PEER:
        fns, why = _peer()
        if fns is None:
            raise RuntimeError(f"{PEER} {why}")
        return lambda x, w, b: fns[0](x, w, b, activation="silu")
    raise ValueError(f"unknown provider {name!r}")


def _update_fn(name: str):
    """The callable (x, state, w, b) -> out of provider `name` (state updated in place)."""
    if name in ("reference", "compiled-reference"):
        from arkernels.reference import causal_conv1d_update_ref

        return lambda x, s, w, b: causal_conv1d_update_ref(x, s, w, b, "silu")
    if name in _BACKEND:
        import arkernels

        backend = _BACKEND[name]
        return lambda x, s, w, b: arkernels.causal_conv1d_update(x, s, w, b, "silu", backend=backend)
    if name == PEER:
        fns, why = _peer()
        if fns is None:
            raise RuntimeError(f"{PEER} {why}")
        return lambda x, s, w, b: fns[1](x, s, w, b, "silu")
    raise ValueError(f"unknown provider {name!r}")


def _skip_reason(name: str, case: Case) -> str | None:
    if name == "compiled-reference" and case.mode == UPDATE:
        return "the update's reference is timed eager only (in-place index_put)"
    if name == "compiled-reference" and "headline" not in case.tags:
        return "compiled at the headline shapes only (each shape recompiles: time budget)"
    if name == "compiled-reference" and not case.device.startswith("cuda") and case.dtype != torch.float32:
        return "on the CPU compiled for fp32 only (compile time)"
    return None


# ---------------------------------------------------------------- cases

def cases(device, quick: bool) -> list[Case]:
    dev = torch.device(device)
    cfg = SHAPES["cuda" if dev.type == "cuda" else "cpu"]
    name = str(dev)
    out: list[Case] = []

    def add(shape, dtype, mode, tags, x=None):
        size = torch.empty((), dtype=dtype).element_size()
        if mode == UPDATE:
            B, D = shape
            nbytes = B * D * size * (2 + (WIDTH - 1) + (WIDTH - 1))
        else:
            nbytes = math.prod(shape) * size * _ELEMENTS_MOVED[mode]
        out.append(Case(op=OP, mode=mode, dtype=dtype, shape=shape, device=name, bytes=nbytes, flops=None, x=x,
                        tags=tags, params={"width": WIDTH}))

    for shape in cfg["headline"]:  # the headline first: a report cut short still has it
        for mode in MODES:
            add(shape, torch.bfloat16, mode, ("headline", "sweep"), x=shape[-1])
    add(cfg["update"], torch.bfloat16, UPDATE, ("headline",))
    if quick:
        return out
    for shape in cfg["headline"]:
        for mode in MODES:
            add(shape, torch.float32, mode, ("fp32",), x=shape[-1])
    add(cfg["update"], torch.float32, UPDATE, ("fp32",))
    for mode in MODES:
        for L in cfg["sweep_L"]:
            D = cfg["elements"] // (cfg["B"] * L)
            add((cfg["B"], D, L), torch.bfloat16, mode, ("sweep",), x=L)
    return out


# ---------------------------------------------------------------- running one case

@dataclass
class _Inputs:
    x: torch.Tensor
    w: torch.Tensor
    b: torch.Tensor
    g: torch.Tensor | None = None
    state: torch.Tensor | None = None   # the update's cache: timed calls keep shifting it in place
    state0: torch.Tensor | None = None  # its initial value, for the checks


def _make_inputs(case: Case) -> _Inputs:
    dev = torch.device(case.device)
    if case.mode == UPDATE:
        B, D = case.shape
        state = torch.randn(B, D, WIDTH - 1, device=dev).to(case.dtype)
        return _Inputs(x=torch.randn(B, D, device=dev).to(case.dtype), w=torch.randn(D, WIDTH, device=dev) * 0.5,
                       b=torch.randn(D, device=dev), state=state, state0=state.clone())
    grad = case.mode != "fwd"
    x = torch.randn(case.shape, device=dev).to(case.dtype)
    D = case.shape[1]
    w = torch.randn(D, WIDTH, device=dev) * 0.5  # fp32 parameters, as with mixed precision
    b = torch.randn(D, device=dev)
    g = torch.randn(case.shape, device=dev).to(case.dtype) if grad else None
    if grad:
        x.requires_grad_()
        w.requires_grad_()
        b.requires_grad_()
    return _Inputs(x, w, b, g)


def _call(fn, inp: _Inputs, case: Case):
    if case.mode == UPDATE:
        def step():
            with torch.no_grad():
                return fn(inp.x, inp.state, inp.w, inp.b)
        return step
    if inp.g is None:
        return lambda: fn(inp.x, inp.w, inp.b)
    return lambda: torch.autograd.grad(fn(inp.x, inp.w, inp.b), (inp.x, inp.w, inp.b), inp.g)


# Rows checked against float64: batch 0, the first and last few channels.
def _channels(D: int) -> list[int]:
    return sorted(set(range(min(4, D))) | set(range(max(0, D - 4), D)))


def _oracle(inp: _Inputs, case: Case) -> list[torch.Tensor]:
    """float64 reference of the checked rows: [out] or [out, dx] (update: [out, new state rows])."""
    from arkernels.reference import causal_conv1d_ref, causal_conv1d_update_ref

    ch = _channels(case.shape[1])
    w64, b64 = inp.w.detach()[ch].double(), inp.b.detach()[ch].double()
    if case.mode == UPDATE:
        state = inp.state0[:1, ch].double().clone()
        out = causal_conv1d_update_ref(inp.x[:1, ch].double(), state, w64, b64, "silu")
        return [out, state]
    x64 = inp.x.detach()[:1, ch].double()
    if inp.g is None:
        return [causal_conv1d_ref(x64, w64, b64, activation="silu")]
    x64.requires_grad_()
    out = causal_conv1d_ref(x64, w64, b64, activation="silu")
    (dx,) = torch.autograd.grad(out, (x64,), inp.g[:1, ch].double())
    return [out.detach(), dx]


def _check(name: str, fn, inp: _Inputs, oracle, case: Case) -> float:
    """Max relative error of the checked rows against the float64 oracle, on the full inputs; new outputs
    are NaN-poisoned first so that an element a kernel does not write fails."""
    import contextlib

    from arkernels._outputs import poisoned_outputs
    from arkernels.testing import relative_error

    ch = _channels(case.shape[1])
    with poisoned_outputs() if name in _BACKEND else contextlib.nullcontext():
        if case.mode == UPDATE:
            state = inp.state0.clone()
            with torch.no_grad():
                out = fn(inp.x, state, inp.w, inp.b)
            outs = [out[:1, ch], state[:1, ch]]
        else:
            out = fn(inp.x, inp.w, inp.b)
            outs = [out[:1, ch]]
            if inp.g is not None:
                outs.append(torch.autograd.grad(out, (inp.x,), inp.g)[0][:1, ch])
    return max(relative_error(o.detach(), r) for o, r in zip(outs, oracle))



def run(case: Case, providers: list[str]) -> list[Row]:
    torch.manual_seed(0)

    def prepare():
        sets = [_make_inputs(case) for _ in range(input_sets(case.bytes, torch.device(case.device)))]
        return sets, _oracle(sets[0], case)

    return run_providers(case, providers, prepare,
                         lambda name, prepared, row: _run_provider(name, case, *prepared, row))


def _run_provider(name: str, case: Case, sets: list[_Inputs], oracle, row: Row) -> None:
    from arkernels.testing.numerics import REL_TOL

    skip = _skip_reason(name, case)
    if skip is not None:
        row.status, row.note = "skipped", skip
        return
    fn = _update_fn(name) if case.mode == UPDATE else _conv_fn(name, case)
    record_error(row, _check(name, fn, sets[0], oracle, case), REL_TOL[case.dtype])
    row.time_ms = time_ms(rotating([_call(fn, inp, case) for inp in sets]), case.device)
    row.input_sets = len(sets)


# ---------------------------------------------------------------- headline

TARGETS = {"fwd_frac_copy": 0.80}


def headline(rows: list[Row], ceilings) -> list[str]:
    head = [r for r in rows if r.op == OP and "headline" in r.tags]
    if not head:
        return []
    on_gpu = head[0].device.startswith("cuda")
    lines = [f"## Headline: causal_conv1d (B x D x L, width {WIDTH}, silu, bias; bf16)", ""]
    lines.append(f"Target: the forward at >= {TARGETS['fwd_frac_copy']:.0%} of the copy bandwidth at both shapes "
                 "(bytes: read x + write out). fwd+bwd (5 tensors of traffic) and the decode update are shown, "
                 "not graded.")
    if not on_gpu:
        lines.append("This is a CPU run: the target is a GPU target; nothing below is a GPU measurement.")
    lines += ["", "| shape | provider | fwd ms | fwd % of copy | fwd+bwd ms | fwd+bwd % of copy | vs peer fwd / fwd+bwd "
              "| verdict |", "|---|---|---|---|---|---|---|---|"]
    by = {(r.shape, r.provider, r.mode): r for r in head}
    for shape in dict.fromkeys(r.shape for r in head if r.mode != UPDATE):
        for provider in PROVIDERS:
            fwd, fb = by.get((shape, provider, "fwd")), by.get((shape, provider, "fwd+bwd"))
            if fwd is None and fb is None:
                continue
            frac = fwd.frac_copy if fwd is not None and fwd.status == "ok" else None
            graded = on_gpu and provider.startswith("arkernels-")
            verdict = ("**PASS**" if frac is not None and frac >= TARGETS["fwd_frac_copy"] else "**MISS**") \
                if graded else "—"
            lines.append(f"| {shape} | {provider} | {ms(fwd)} | {_pct(fwd)} | {ms(fb)} | {_pct(fb)} | "
                         f"{_x(fwd)} / {_x(fb)} | {verdict} |")
    upd = [r for r in head if r.mode == UPDATE]
    if upd:
        lines += ["", f"Decode update {upd[0].shape} (B x D, one token, state_len {WIDTH - 1}):", ""]
        lines += [f"- {r.provider}: {ms(r)}" + (" ms" if r.time_ms else "")
                  + (f", {r.speedup:.2f}x vs {PEER}" if r.speedup else "") for r in upd]
    return lines


def _pct(row: Row | None) -> str:
    return f"{row.frac_copy:.0%}" if row is not None and row.frac_copy is not None else "—"


def _x(row: Row | None) -> str:
    return f"{row.speedup:.2f}x" if row is not None and row.speedup is not None else "—"
