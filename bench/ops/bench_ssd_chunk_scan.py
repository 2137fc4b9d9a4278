"""Benchmark of arkernels.ssd_chunk_scan (Mamba-2 SSD) against mamba-ssm's ``mamba_chunk_scan_combined``.

Providers: the chunked PyTorch reference (chunk 256), the arkernels backends (triton on CUDA, cpu on the
CPU) and the peer mamba-ssm 2.3.2 (Triton, ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined``,
chunk 256) where it imports (the reason is recorded when it does not).

Call as a Mamba-2 layer does: D (h,), dt_bias (h,), dt_softplus=True, no z (the gate goes to the norm),
A = -exp(A_log) fp32, dt in the input dtype. Modes: "fwd", and "fwd+bwd" (``torch.autograd.grad`` of x,
dt, A, B, C, D, dt_bias for a fresh random output gradient).

Cases, CUDA: the headline (b4, l4096, h32, p64, n128, g1) bf16 (the anchor: peer 0.491 ms fwd, 6.145 ms
fwd+bwd on the H100) and fp32, a sweep over l at 16384 tokens per call (b = 16384 / l), and one odd
shape with every feature (z, D (h, p), seq_idx, initial states, g2). CPU: small shapes.

Bytes per call (the minimum a kernel must move): fwd reads x, dt, B, C (z) and writes out; fwd+bwd adds
reading x, dt, B, C, dout (z) and writing dx, ddt, dB, dC (dz). FLOPs: the chunked algorithm at chunk
Q = 256 (the peer's), per chunk 2 Q^2 n (C B^T, per group) + per head 2 Q^2 p (intra-chunk product) +
4 Q n p (chunk state and its output); fwd+bwd counts 3x the forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.common import ms, record_error, run_providers
from bench.registry import MODES, Case, Row
from bench.timing import input_sets, rotating, time_ms

OP = "ssd_chunk_scan"
PEER = "mamba-ssm"
PEER_PACKAGE = "mamba-ssm"
SWEEP_AXIS = "l"

PROVIDERS = ("reference", "arkernels-triton", "arkernels-cpu", PEER)
_BACKEND = {"arkernels-triton": "triton", "arkernels-cpu": "cpu"}
PEER_CHUNK = 256
TARGETS = {"fwd_speedup": 1.2, "fwdbwd_speedup": 2.0}

# (b, l, h, p, n, g)
SHAPES = {
    "cuda": {"headline": (4, 4096, 32, 64, 128, 1), "tokens": 16384, "sweep_l": (512, 1024, 2048, 8192, 16384),
             "odd": (2, 1134, 8, 64, 64, 2)},
    "cpu": {"headline": (1, 512, 4, 32, 32, 1), "tokens": 1024, "sweep_l": (256, 1024), "odd": (1, 137, 2, 32, 16, 2)},
}


# ---------------------------------------------------------------- providers

_peer_cache: list = []


def _peer():
    """(mamba_chunk_scan_combined or None, why it is missing)."""
    if not _peer_cache:
        try:
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            _peer_cache.append((mamba_chunk_scan_combined, None))
        except Exception as err:  # noqa: BLE001  (ImportError, einops missing, triton failing to import)
            _peer_cache.append((None, f"not importable ({type(err).__name__}: {err})"))
    return _peer_cache[0]


def providers(device) -> dict[str, str | None]:
    from arkernels.ops import _backends

    dev = torch.device(device)
    out: dict[str, str | None] = {"reference": None}
    for name, backend in _BACKEND.items():
        if backend == "triton" and dev.type != "cuda":
            out[name] = "needs a CUDA device (the Triton interpreter on CPU is for tests, not timings)"
            continue
        out[name] = _backends.unavailable_reason(OP, backend, dev)
    fn, why = _peer()
    out[PEER] = "CUDA only" if dev.type != "cuda" else why
    return out


def _provider_fn(name: str):
    """(x, dt, A, B, C, **kwargs) -> out of provider `name`."""
    if name == "reference":
        from arkernels.reference import ssd_chunk_scan_chunked_ref

        return lambda *a, **k: ssd_chunk_scan_chunked_ref(*a, PEER_CHUNK, **k)
    if name in _BACKEND:
        import arkernels

        backend = _BACKEND[name]
        return lambda *a, **k: arkernels.ssd_chunk_scan(*a, PEER_CHUNK, backend=backend, **k)
    if name == PEER:
        fn, why = _peer()
        if fn is None:
            raise RuntimeError(f"{PEER} {why}")
        return lambda *a, **k: fn(*a, PEER_CHUNK, **k)
    raise ValueError(f"unknown provider {name!r}")


# ---------------------------------------------------------------- cases

def _flops(b, l, h, p, n, g) -> float:
    q = PEER_CHUNK
    chunks = b * -(-l // q)
    return float(chunks * (g * 2 * q * q * n + h * (2 * q * q * p + 4 * q * n * p)))


def _bytes(shape, dtype, mode, full: bool) -> int:
    b, l, h, p, n, g = shape
    es = torch.empty((), dtype=dtype).element_size()
    per_x, per_bc, per_dt = b * l * h * p * es, b * l * g * n * es, b * l * h * es
    z = per_x if full else 0
    fwd = per_x + 2 * per_bc + per_dt + z + per_x
    if mode == "fwd":
        return fwd
    return fwd + (2 * per_x + 2 * per_bc + per_dt + z) + (per_x + 2 * per_bc + per_dt + z)


def cases(device, quick: bool) -> list[Case]:
    dev = torch.device(device)
    cfg = SHAPES["cuda" if dev.type == "cuda" else "cpu"]
    out: list[Case] = []

    def add(shape, dtype, mode, tags, x=None, full=False):
        flops = _flops(*shape) * (1 if mode == "fwd" else 3)
        out.append(Case(op=OP, mode=mode, dtype=dtype, shape=shape, device=str(dev),
                        bytes=_bytes(shape, dtype, mode, full), flops=flops, x=x, tags=tags, params={"full": full}))

    head = cfg["headline"]
    for mode in MODES:
        add(head, torch.bfloat16, mode, ("headline", "sweep"), x=head[1])
    if quick:
        return out
    for mode in MODES:
        add(head, torch.float32, mode, ("headline-fp32",))
        add(cfg["odd"], torch.bfloat16, mode, ("odd",), full=True)
    for mode in MODES:
        for L in cfg["sweep_l"]:
            shape = (max(1, cfg["tokens"] // L), L, *head[2:])
            if shape != head:
                add(shape, torch.bfloat16, mode, ("sweep",), x=L)
    return out


# ---------------------------------------------------------------- running one case

@dataclass
class _Inputs:
    args: list            # x, dt, A, B, C
    kwargs: dict          # D, z, dt_bias, initial_states, seq_idx, dt_softplus
    g: torch.Tensor | None


def _make_inputs(case: Case) -> _Inputs:
    b, l, h, p, n, g = case.shape
    dev, dt_ = torch.device(case.device), case.dtype
    grad = case.mode != "fwd"
    full = case.params.get("full", False)
    x = torch.randn(b, l, h, p, device=dev).to(dt_)
    dt = (torch.randn(b, l, h, device=dev) - 3.0).to(dt_)
    A = -torch.exp(torch.empty(h, device=dev).uniform_(-1.0, 2.0))
    B = torch.randn(b, l, g, n, device=dev).to(dt_)
    C = torch.randn(b, l, g, n, device=dev).to(dt_)
    D = torch.randn(h, p, device=dev) if full else torch.randn(h, device=dev)
    dt_bias = torch.randn(h, device=dev) * 0.5
    args = [x, dt, A, B, C]
    kwargs = {"D": D, "dt_bias": dt_bias, "dt_softplus": True}
    if full:
        kwargs["z"] = torch.randn(b, l, h, p, device=dev).to(dt_)
        kwargs["initial_states"] = torch.randn(b, h, p, n, device=dev)
        seq = torch.zeros(b, l, dtype=torch.int32, device=dev)
        seq[:, l // 3:] = 1
        seq[:, 2 * l // 3:] = 2
        kwargs["seq_idx"] = seq
    if grad:
        for t in args + [D, dt_bias]:
            t.requires_grad_()
    g_out = torch.randn(b, l, h, p, device=dev).to(dt_) if grad else None
    return _Inputs(args, kwargs, g_out)


def _leaves(x: _Inputs) -> list[torch.Tensor]:
    return [t for t in x.args + [x.kwargs["D"], x.kwargs["dt_bias"]] if t.requires_grad]


def _call(fn, x: _Inputs):
    if x.g is None:
        return lambda: fn(*x.args, **x.kwargs)
    return lambda: torch.autograd.grad(fn(*x.args, **x.kwargs), _leaves(x), x.g)


def _row0(x: _Inputs):
    """Batch row 0 of the inputs in float64 (rows are independent: its outputs and its gradients of x,
    dt, B, C depend on row 0 alone)."""
    args = [t.detach()[:1].double() if i in (0, 1, 3, 4) else t.detach().double() for i, t in enumerate(x.args)]
    kw = {}
    for k, v in x.kwargs.items():
        if isinstance(v, torch.Tensor):
            v = v.detach()
            kw[k] = v[:1] if k in ("z", "initial_states", "seq_idx") else v
            kw[k] = kw[k].double() if kw[k].is_floating_point() else kw[k]
        else:
            kw[k] = v
    return args, kw


def _oracle(x: _Inputs) -> list[torch.Tensor]:
    """float64 chunked reference on batch row 0: [out] or [out, dx, ddt, dB, dC]."""
    from arkernels.reference import ssd_chunk_scan_chunked_ref

    args, kw = _row0(x)
    if x.g is None:
        return [ssd_chunk_scan_chunked_ref(*args, 64, **kw)]
    for i in (0, 1, 3, 4):
        args[i].requires_grad_()
    out = ssd_chunk_scan_chunked_ref(*args, 64, **kw)
    grads = torch.autograd.grad(out, [args[i] for i in (0, 1, 3, 4)], x.g[:1].double())
    return [out.detach(), *grads]


def _check(name: str, fn, x: _Inputs, oracle) -> float:
    """Max relative error over the checked outputs (batch row 0) against float64; new outputs of the
    arkernels backends are NaN-poisoned first so that an unwritten element fails."""
    import contextlib

    from arkernels._outputs import poisoned_outputs
    from arkernels.testing import relative_error

    with poisoned_outputs() if name in _BACKEND else contextlib.nullcontext():
        out = fn(*x.args, **x.kwargs)
        outs = [out]
        if x.g is not None:
            grads = torch.autograd.grad(out, [x.args[i] for i in (0, 1, 3, 4)], x.g)
            outs += list(grads)
    return max(relative_error(o.detach()[:1], r) for o, r in zip(outs, oracle))



def _skip_reason(name: str, case: Case) -> str | None:
    if name == "reference" and case.device.startswith("cuda") and "headline" not in case.tags \
            and "odd" not in case.tags:
        return "timed at the headline and odd shapes only (memory: it materialises (Q, Q) decays per head)"
    return None


def run(case: Case, providers: list[str]) -> list[Row]:
    from arkernels.testing.numerics import REL_TOL

    torch.manual_seed(0)

    def prepare():
        sets = [_make_inputs(case) for _ in range(input_sets(case.bytes, torch.device(case.device), max_sets=8))]
        return sets, _oracle(sets[0])

    def measure(name, prepared, row):
        sets, oracle = prepared
        skip = _skip_reason(name, case)
        if skip is not None:
            row.status, row.note = "skipped", skip
            return
        fn = _provider_fn(name)
        record_error(row, _check(name, fn, sets[0], oracle), REL_TOL[case.dtype])
        row.time_ms = time_ms(rotating([_call(fn, x) for x in sets]), case.device)
        row.input_sets = len(sets)

    return run_providers(case, providers, prepare, measure)


# ---------------------------------------------------------------- headline

def headline(rows: list[Row], ceilings) -> list[str]:
    head = [r for r in rows if r.op == OP and "headline" in r.tags]
    if not head:
        return []
    on_gpu = head[0].device.startswith("cuda")
    lines = [f"## Headline: ssd_chunk_scan {head[0].shape} (b x l x h x p x n x g), {head[0].dtype}", ""]
    lines.append(f"Targets (on the H100): forward >= {TARGETS['fwd_speedup']:.1f}x {PEER} "
                 f"(`mamba_chunk_scan_combined`, chunk {PEER_CHUNK}), forward+backward >= "
                 f"{TARGETS['fwdbwd_speedup']:.1f}x. The anchor measured the peer at 0.491 / 6.145 ms.")
    if not on_gpu:
        lines.append("This is a CPU run: the targets are GPU targets; nothing below is a GPU measurement.")
    lines += ["", "| provider | fwd ms | fwd TFLOP/s | fwd vs peer | fwd+bwd ms | fwd+bwd vs peer | verdict |",
              "|---|---|---|---|---|---|---|"]
    by = {(r.provider, r.mode): r for r in head}
    for provider in PROVIDERS:
        fwd, fb = by.get((provider, "fwd")), by.get((provider, "fwd+bwd"))
        if fwd is None and fb is None:
            continue
        fs = fwd.speedup if fwd is not None and fwd.status == "ok" else None
        bs = fb.speedup if fb is not None and fb.status == "ok" else None
        verdict = "—"
        if provider.startswith("arkernels-") and on_gpu:
            ok = fs is not None and bs is not None and fs >= TARGETS["fwd_speedup"] and bs >= TARGETS["fwdbwd_speedup"]
            verdict = "**PASS**" if ok else "**MISS**"
        lines.append(f"| {provider} | {ms(fwd)} | {_num(fwd.tflops if fwd else None)} | {_x(fs)} | {ms(fb)} | "
                     f"{_x(bs)} | {verdict} |")
    return lines


def _num(v) -> str:
    return "—" if v is None else f"{v:.0f}"


def _x(v) -> str:
    return "—" if v is None else f"{v:.2f}x"
