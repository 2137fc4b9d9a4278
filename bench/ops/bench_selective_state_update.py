"""Benchmark of arkernels.selective_state_update (the Mamba decode step; the state is updated in place).

Providers: the pure-PyTorch reference (eager), the arkernels backends, and the peer mamba-ssm 2.3.2
(``mamba_ssm.ops.triton.selective_state_update.selective_state_update``, Triton) where it loads
(arkernels.testing.peers: also without the package's __init__, which needs mamba-ssm's optional CUDA
extension); otherwise its rows say why.

Cases, CUDA (fp32 state in every row; dt_softplus, dt_bias, D and z on, as the models call it):
  mamba1  state (64, 4096, 16); x, dt, z (64, 4096) fp32; A (4096, 16); B, C (64, 16); D, dt_bias (4096,)
  mamba2  state (64, 64, 64, 128); x, z (64, 64, 64) bf16; dt (64, 64) broadcast over headdim; A (64,)
          broadcast over (headdim, dstate), D and dt_bias (64,) over headdim (stride 0); B, C (64, 1, 128) bf16
These two "step" rows are the headline (target: >= 80% of the copy bandwidth). Not graded: each with
state_batch_indices into a cache twice the batch (continuous batching, "step+idx"), and the multi-token
op with k = 4 tokens and intermediate states ("tokens-k4"; the peer has no multi-token op).
CPU: the same structure at small sizes.

Bytes per call (the minimum a kernel must move): the state rows used, read and written; x, dt, z, B, C
read and out written (per token); A, D, dt_bias read once, counting the distinct elements of a
broadcast tensor; with k tokens, the intermediate states written. No TFLOP/s (a few flops per byte).
"""
from __future__ import annotations

import math

import torch

from bench.common import record_error, run_providers
from bench.registry import Case, Row
from bench.timing import input_sets, rotating, time_ms

OP = "selective_state_update"
PEER = "mamba-ssm"
PEER_PACKAGE = "mamba-ssm"  # distribution name, for the version in the report header
SWEEP_AXIS = "batch"

PROVIDERS = ("reference", "arkernels-cuda", "arkernels-cpu", PEER)
_BACKEND = {"arkernels-cuda": "cuda", "arkernels-cpu": "cpu"}
TARGET_FRAC_COPY = 0.80

# (batch, channel shape, dstate, x dtype) per layout and device.
SHAPES = {
    "cuda": {"mamba1": (64, (4096,), 16, torch.float32), "mamba2": (64, (64, 64), 128, torch.bfloat16)},
    "cpu": {"mamba1": (8, (512,), 16, torch.float32), "mamba2": (8, (8, 16), 32, torch.bfloat16)},
}
MODES = {"step": dict(k=None, indices=False), "step+idx": dict(k=None, indices=True),
         "tokens-k4": dict(k=4, indices=False)}


# ---------------------------------------------------------------- providers

_peer_cache: list = []


def _peer():
    """(mamba-ssm's selective_state_update or None, how it loaded / why it did not)."""
    if not _peer_cache:
        from arkernels.testing.peers import mamba_ssm_selective_state_update

        _peer_cache.append(mamba_ssm_selective_state_update())
    return _peer_cache[0]


def providers(device) -> dict[str, str | None]:
    """provider -> None when it can run on `device`, else the reason it cannot."""
    import arkernels
    from arkernels.ops import _backends

    dev = torch.device(device)
    out: dict[str, str | None] = {"reference": None}
    for name, backend in _BACKEND.items():
        reason = _backends.unavailable_reason(OP, backend, dev)
        if reason is None and not arkernels.native_available():
            reason = "arkernels._C did not load"
        out[name] = reason
    if dev.type != "cuda":
        out[PEER] = "CUDA only (Triton)"
    else:
        fn, how = _peer()
        out[PEER] = None if fn is not None else how
    return out


# ---------------------------------------------------------------- cases

def _bytes(batch, channel, N, x_dtype, k, indices) -> int:
    """Minimal traffic of one call (see the module doc)."""
    xs = torch.empty((), dtype=x_dtype).element_size()
    mamba2 = len(channel) == 2
    rows = batch * math.prod(channel)
    tokens = k or 1
    state = 2 * rows * N * 4  # fp32 state, read + written
    per_token = 3 * rows * xs + 2 * batch * N * xs  # x, z, out; B, C (one group)
    per_token += (batch * channel[0] if mamba2 else rows) * xs  # dt (broadcast over headdim in Mamba-2)
    params = (channel[0] * 4 * 3) if mamba2 else (rows // batch) * 4 * (N + 2)  # A, D, dt_bias
    inter = rows * N * 4 * tokens if k else 0
    idx = batch * 8 if indices else 0
    return state + tokens * per_token + params + inter + idx


def cases(device, quick: bool) -> list[Case]:
    dev = torch.device(device)
    cfg = SHAPES["cuda" if dev.type == "cuda" else "cpu"]
    out = []
    for mode, opts in MODES.items():
        if quick and mode != "step":
            continue
        for layout, (batch, channel, N, x_dtype) in cfg.items():
            shape = (batch,) + ((opts["k"],) if opts["k"] else ()) + channel + (N,)
            out.append(Case(op=OP, mode=mode, dtype=x_dtype, shape=shape, device=str(dev),
                            bytes=_bytes(batch, channel, N, x_dtype, opts["k"], opts["indices"]), flops=None,
                            x=None, tags=(("headline",) if mode == "step" else ()) + (layout,),
                            params=dict(layout=layout, batch=batch, channel=channel, N=N, **opts)))
    return out


# ---------------------------------------------------------------- running one case

def _make_args(case: Case, gen: torch.Generator) -> dict:
    """Keyword arguments of the op, drawn on the CPU from `gen` (then moved), as the models pass them."""
    p = case.params
    dev = torch.device(case.device)
    b, channel, N, k = p["batch"], p["channel"], p["N"], p["k"]
    lead = (b,) if k is None else (b, k)
    mamba2 = len(channel) == 2
    x_dtype = case.dtype

    def randn(shape, dtype=torch.float32, scale=1.0):
        return (torch.randn(shape, generator=gen) * scale).to(dtype=dtype, device=dev)

    Bc = 2 * b if p["indices"] else b
    args = {"state": randn((Bc,) + channel + (N,)), "x": randn(lead + channel, x_dtype)}
    if mamba2:
        H, P = channel
        args["dt"] = (randn(lead + (H,), scale=0.5) - 1.0).to(x_dtype)[..., None].expand(lead + channel)
        # Negate before expanding: negating the expanded view would materialise a dense (H, P, N) A.
        args["A"] = (-torch.rand(H, generator=gen).add(0.1)).to(dev)[:, None, None].expand(H, P, N)
        args["D"] = randn((H,))[:, None].expand(channel)
        args["dt_bias"] = (randn((H,)) * 0.1)[:, None].expand(channel)
        bc = lead + (1, N)
    else:
        args["dt"] = (randn(lead + channel, scale=0.5) - 1.0).to(x_dtype)
        args["A"] = -torch.rand(channel + (N,), generator=gen).add(0.1).to(dev)
        args["D"] = randn(channel)
        args["dt_bias"] = randn(channel) * 0.1
        bc = lead + (N,)
    args["B"] = randn(bc, x_dtype)
    args["C"] = randn(bc, x_dtype)
    args["z"] = randn(lead + channel, x_dtype)
    args["dt_softplus"] = True
    args["state_batch_indices"] = (torch.randperm(Bc, generator=gen)[:b].to(dev) if p["indices"] else None)
    if k is not None:
        args["intermediate_states"] = torch.empty((b, k) + channel + (N,), device=dev)
    return args


def _provider_fn(name: str, case: Case):
    """The callable (**args) -> out of provider `name` (it updates args["state"] in place)."""
    tokens = case.params["k"] is not None
    if name == "reference":
        from arkernels.reference import selective_state_update_ref, selective_state_update_tokens_ref

        return selective_state_update_tokens_ref if tokens else selective_state_update_ref
    if name in _BACKEND:
        import arkernels

        op = arkernels.selective_state_update_tokens if tokens else arkernels.selective_state_update
        backend = _BACKEND[name]
        return lambda **args: op(**args, backend=backend)
    if name == PEER:
        fn, how = _peer()
        if fn is None:
            raise RuntimeError(f"{PEER} {how}")
        return fn
    raise ValueError(f"unknown provider {name!r}")


def _skip_reason(name: str, case: Case) -> str | None:
    if name == PEER and case.params["k"] is not None:
        return "mamba-ssm has no multi-token selective_state_update"
    return None


def _oracle(args: dict, tokens: bool):
    """float64 (out, new state) on a copy of the state: the one-token reference token after token."""
    from arkernels.reference import selective_state_update_ref

    a = {key: (v.to(torch.float64) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
         for key, v in args.items() if key != "intermediate_states"}
    a["state"] = args["state"].to(torch.float64).clone()
    if not tokens:
        return selective_state_update_ref(**a), a["state"]
    outs = []
    for t in range(a["x"].shape[1]):
        step = {key: (v[:, t] if key in ("x", "dt", "B", "C", "z") else v) for key, v in a.items()}
        outs.append(selective_state_update_ref(**step))
    return torch.stack(outs, dim=1), a["state"]


def _check(name: str, fn, args: dict, case: Case) -> float:
    """max(rel err of out, rel err of the new state) against float64, run on a copy of the state, with
    new outputs NaN-poisoned (arkernels providers)."""
    import contextlib

    from arkernels._outputs import poisoned_outputs
    from arkernels.testing import relative_error

    tokens = case.params["k"] is not None
    ref_out, ref_state = _oracle(args, tokens)
    run_args = dict(args, state=args["state"].clone())
    with torch.no_grad(), (poisoned_outputs() if name in _BACKEND else contextlib.nullcontext()):
        out = fn(**run_args)
    idx = args.get("state_batch_indices")
    rows = idx if idx is not None else slice(None)
    return max(relative_error(out, ref_out), relative_error(run_args["state"][rows], ref_state[rows]))



def run(case: Case, providers: list[str]) -> list[Row]:
    from arkernels.testing.numerics import REL_TOL

    gen = torch.Generator().manual_seed(0)

    def prepare():
        return [_make_args(case, gen) for _ in range(input_sets(case.bytes, torch.device(case.device)))]

    def measure(name, sets, row):
        skip = _skip_reason(name, case)
        if skip is not None:
            row.status, row.note = "skipped", skip
            return
        fn = _provider_fn(name, case)
        record_error(row, _check(name, fn, sets[0], case), REL_TOL[case.dtype])
        if name == PEER:
            row.note = (row.note + "; " if row.note else "") + _peer()[1]

        def call(a, fn=fn):
            with torch.no_grad():
                return fn(**a)

        # Each call advances its set's state in place (the values stay bounded: exp(dt A) < 1).
        row.time_ms = time_ms(rotating([lambda a=a: call(a) for a in sets]), case.device)
        row.input_sets = len(sets)

    return run_providers(case, providers, prepare, measure)


# ---------------------------------------------------------------- headline

def headline(rows: list[Row], ceilings) -> list[str]:
    head = [r for r in rows if r.op == OP and "headline" in r.tags]
    if not head:
        return []
    on_gpu = head[0].device.startswith("cuda")
    lines = [f"## Headline: {OP} (decode step, fp32 state, updated in place)", "",
             f"Target: the arkernels CUDA kernel at >= {TARGET_FRAC_COPY:.0%} of the copy bandwidth at the Mamba-1 "
             "(64, 4096, 16) and Mamba-2 (64, 64, 64, 128, bf16 inputs) shapes; the peer's time for comparison."]
    if not on_gpu:
        lines.append("This is a CPU run: the target is a GPU target and the peer does not run on the CPU.")
    lines += ["", "| shape | dtype (x) | provider | ms | GB/s | % of copy | vs peer | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for r in head:
        if r.provider not in ("arkernels-cuda", "arkernels-cpu", PEER):
            continue
        frac = f"{r.frac_copy:.0%}" if r.frac_copy is not None else "—"
        ms = f"{r.time_ms:.4f}" if r.time_ms is not None else r.status
        gbps = f"{r.gbps:.0f}" if r.gbps is not None else "—"
        speed = f"{r.speedup:.2f}x" if r.speedup is not None else "—"
        verdict = "—"
        if r.provider == "arkernels-cuda" and on_gpu:
            ok = r.status == "ok" and r.frac_copy is not None and r.frac_copy >= TARGET_FRAC_COPY
            verdict = "**PASS**" if ok else "**MISS**"
        lines.append(f"| {r.shape} | {r.dtype} | {r.provider} | {ms} | {gbps} | {frac} | {speed} | {verdict} |")
    return lines
