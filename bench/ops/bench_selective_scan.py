"""Benchmark of arkernels.selective_scan (Mamba-1 S6) against mamba-ssm's CUDA selective_scan_fn.

Providers: the log-depth reference (materialises (B, D, N, L)), arkernels-cuda / arkernels-cpu, and
the peer "mamba-ssm" (its opt-in CUDA extension, built on the GPU machine by
``scripts/gpu_check.sh mamba-peer``; python/arkernels/testing/peers.py loads it).

Cases (CUDA, bf16 u/delta/B/C, fp32 A/D, input-dependent B and C as in Mamba): the issue's two
headline shapes (b4 d2048 l4096 n16) and (b2 d1536 l2048 n16), "fwd" and "fwd+bwd"
(``torch.autograd.grad`` of u, delta, A, B, C, D); one Mamba-block variant (z gate, delta_bias,
softplus) at the small shape. Each provider is checked against a float64 reference on two channels.
Bytes: fwd reads u, delta and writes out (B, C are small); fwd+bwd also reads u, delta, dout and
writes du, ddelta. The scan is bound by B*D*L*N exponentials, so "exp/s" is the useful rate: the
report's TFLOP/s column carries tera-exponentials per second of one forward (B*D*L*N / time).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.common import ms, record_error, run_providers
from bench.registry import Case, Row
from bench.timing import time_ms

OP = "selective_scan"
PEER = "mamba-ssm"
PEER_PACKAGE = None
SWEEP_AXIS = "L"
PROVIDERS = ("reference", "arkernels-cuda", "arkernels-cpu", PEER)
_BACKEND = {"arkernels-cuda": "cuda", "arkernels-cpu": "cpu"}
TARGETS = {"fwd": 2.0, "fwd+bwd": 1.5}  # speedup vs mamba-ssm (issue 3, H100)
REFERENCE_MAX_ELEMS = 2**28            # B*D*L*N above which the materialising reference is not run

SHAPES = {
    "cuda": [((4, 2048, 4096, 16), ("headline",), False), ((2, 1536, 2048, 16), ("headline",), False),
             ((2, 1536, 2048, 16), ("block",), True)],
    "cpu": [((1, 64, 512, 16), ("headline",), False), ((1, 64, 512, 16), ("block",), True)],
}


def providers(device) -> dict[str, str | None]:
    from arkernels.ops import _backends
    from arkernels.testing.peers import mamba_ssm_selective_scan

    dev = torch.device(device)
    out: dict[str, str | None] = {"reference": None}
    for name, backend in _BACKEND.items():
        out[name] = _backends.unavailable_reason(OP, backend, dev)
    fn, why = mamba_ssm_selective_scan()
    out[PEER] = "CUDA only" if dev.type != "cuda" else (None if fn is not None else why)
    return out


def cases(device, quick: bool) -> list[Case]:
    dev = torch.device(device)
    out = []
    for shape, tags, block in SHAPES["cuda" if dev.type == "cuda" else "cpu"]:
        if quick and "headline" not in tags:
            continue
        for mode in ("fwd", "fwd+bwd"):
            b, d, L, n = shape
            tensors = 3 if mode == "fwd" else 8
            out.append(Case(op=OP, mode=mode, dtype=torch.bfloat16, shape=shape, device=str(dev),
                            bytes=b * d * L * 2 * tensors, flops=float(b * d * L * n), tags=tags,
                            params={"block": block}))
    return out


@dataclass
class _Inputs:
    args: list
    kwargs: dict
    leaves: list
    g: torch.Tensor | None


def _make_inputs(case: Case) -> _Inputs:
    b, d, L, n = case.shape
    dev, dt = case.device, case.dtype
    gen = torch.Generator(device=dev).manual_seed(0)
    block = case.params["block"]
    u = torch.randn(b, d, L, device=dev, generator=gen).to(dt)
    lo, hi = (-4.0, -1.0) if block else (0.01, 0.11)
    delta = (torch.rand(b, d, L, device=dev, generator=gen) * (hi - lo) + lo).to(dt)
    A = -torch.rand(d, n, device=dev, generator=gen) * 1.7 - 0.3
    B = torch.randn(b, n, L, device=dev, generator=gen).to(dt)
    C = torch.randn(b, n, L, device=dev, generator=gen).to(dt)
    D = torch.randn(d, device=dev, generator=gen)
    args = [u, delta, A, B, C, D]
    kwargs = {}
    if block:
        kwargs = dict(z=torch.randn(b, d, L, device=dev, generator=gen).to(dt),
                      delta_bias=torch.rand(d, device=dev, generator=gen) - 0.5, delta_softplus=True)
    grad = case.mode != "fwd"
    leaves = [t.requires_grad_() for t in args] if grad else []
    g = torch.randn(b, d, L, device=dev, generator=gen).to(dt) if grad else None
    return _Inputs(args, kwargs, leaves, g)


def _fn(name):
    if name == "reference":
        from arkernels.reference import selective_scan_ref

        return selective_scan_ref
    if name in _BACKEND:
        import arkernels

        backend = _BACKEND[name]
        return lambda *a, **k: arkernels.selective_scan(*a, backend=backend, **k)
    from arkernels.testing.peers import mamba_ssm_selective_scan

    fn, why = mamba_ssm_selective_scan()
    if fn is None:
        raise RuntimeError(why)
    return fn


def _call(fn, x: _Inputs):
    if x.g is None:
        def run():
            with torch.no_grad():
                return fn(*x.args, **x.kwargs)
        return run
    return lambda: torch.autograd.grad(fn(*x.args, **x.kwargs), x.leaves, x.g)


def _outputs(fn, x: _Inputs, rows):
    """[out] or [out, du, ddelta, dA] on the checked channels."""
    if x.g is None:
        with torch.no_grad():
            return [fn(*x.args, **x.kwargs)[:, rows]]
    out = fn(*x.args, **x.kwargs)
    du, ddelta, dA = torch.autograd.grad(out, x.leaves[:3], x.g)
    return [out[:, rows], du[:, rows], ddelta[:, rows], dA[rows]]


def _oracle(x: _Inputs, rows):
    """float64 reference on the checked channels (B and C are shared by every channel)."""
    from arkernels.reference import selective_scan_ref

    def pick(t):
        return t.detach()[:, rows].double() if t.dim() == 3 else t.detach()[rows].double()

    u, delta, A, B, C, D = x.args
    leaves = [pick(u), pick(delta), pick(A)]
    kw = {k: (pick(v) if isinstance(v, torch.Tensor) else v) for k, v in x.kwargs.items()}
    if x.g is None:
        return [selective_scan_ref(*leaves, B.detach().double(), C.detach().double(), pick(D), **kw)]
    for t in leaves:
        t.requires_grad_()
    out = selective_scan_ref(*leaves, B.detach().double(), C.detach().double(), pick(D), **kw)
    return [out.detach(), *torch.autograd.grad(out, leaves, x.g[:, rows].double())]



def run(case: Case, providers: list[str]) -> list[Row]:
    from arkernels._outputs import poisoned_outputs
    from arkernels.testing import relative_error
    from arkernels.testing.numerics import REL_TOL

    channels = [0, case.shape[1] - 1]

    def prepare():
        x = _make_inputs(case)
        return x, _oracle(x, channels)

    def measure(name, prepared, row):
        x, oracle = prepared
        b, d, L, n = case.shape
        if name == "reference" and b * d * L * n > REFERENCE_MAX_ELEMS:
            row.status, row.note = "skipped", "materialises (B, D, N, L): too large here"
            return
        fn = _fn(name)
        with poisoned_outputs(name in _BACKEND):
            got = _outputs(fn, x, channels)
        record_error(row, max(relative_error(o, r) for o, r in zip(got, oracle)), 2 * REL_TOL[case.dtype])
        row.time_ms = time_ms(_call(fn, x), case.device)

    return run_providers(case, providers, prepare, measure)


def headline(rows: list[Row], ceilings) -> list[str]:
    head = [r for r in rows if r.op == OP]
    if not head:
        return []
    on_gpu = head[0].device.startswith("cuda")
    lines = ["## Headline: selective_scan (B x D x L x N, bf16, input-dependent B/C)", "",
             f"Targets (issue 3, H100): forward >= {TARGETS['fwd']:.1f}x and forward+backward >= "
             f"{TARGETS['fwd+bwd']:.1f}x faster than {PEER}'s CUDA scan at b4 d2048 l4096 n16 and b2 d1536 l2048 n16."
             + ("" if on_gpu else " CPU run: not graded."), "",
             "| shape | variant | mode | arkernels ms | mamba-ssm ms | speedup | Texp/s | target | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {(r.shape, tuple(r.tags), r.mode, r.provider): r for r in head}
    for (shape, tags, mode, provider), r in by.items():
        if provider != "arkernels-cuda" and not (provider == "arkernels-cpu" and not on_gpu):
            continue
        peer = by.get((shape, tags, mode, PEER))
        sp = r.speedup
        target = TARGETS[mode] if "headline" in tags else None
        verdict = "—" if target is None or not on_gpu else ("**PASS**" if sp and sp >= target else "**MISS**")
        lines.append(f"| {shape} | {'Mamba block (z, bias, softplus)' if 'block' in tags else 'plain'} | {mode} | "
                     f"{ms(r)} | {ms(peer)} | {f'{sp:.2f}x' if sp else '—'} | "
                     f"{(r.tflops or 0):.2f} | {f'{target:.1f}x' if target else '—'} | {verdict} |")
    return lines

