"""Benchmark of a whole Mamba-1 language model (arkernels.models.Mamba1LMHeadModel, impl="fast"): training
throughput (forward + cross-entropy + backward, tokens/s) and a forward-only row.

CUDA: the ~130M model of mamba-ssm's release (d_model 768, n_layer 24, vocab 50280, d_state 16, expand 2) at
batch 8 x 2048 tokens, float32 parameters under torch.autocast(bfloat16) (mixed precision, how mamba-ssm
models are trained). CPU: a tiny config, so that the module runs anywhere (no peer there).

Peer "mamba-ssm": mamba_ssm 2.3.2's MambaLMHeadModel with the same config and the same weights (our state
dict loaded with strict=True), rms_norm, residual_in_fp32 and fused_add_norm on (its defaults: its Triton
fused add+RMSNorm). Its CUDA selective scan is the one built by .whl/build_mamba_scan.py into
/tmp/mamba_peer (ARKERNELS_MAMBA_PEER overrides). causal-conv1d is not installed there, so mamba-ssm's
Mamba takes its non-fused path (nn.Conv1d + selective_scan_fn) instead of mamba_inner_fn; the row's note
says which path it took. mamba_ssm imports transformers and huggingface_hub at module level for its
generation / hub helpers (not used here); where they are missing, empty stand-ins are put in sys.modules
for the import only (the note says so).

Checked: each provider's bf16 logits of the first batch row against our model in float32 (impl="fast",
which tests/models checks against the float64 oracle), norm-relative error, bound 5e-2 (24 bf16 layers).
"""
from __future__ import annotations

import importlib
import os
import sys
import types

import torch
import torch.nn.functional as F

from bench.common import error_text
from bench.registry import Case, Row
from bench.timing import time_ms

OP = "mamba_lm"
PEER = "mamba-ssm"
SWEEP_AXIS = "L"
PROVIDERS = ("arkernels", PEER)
PEER_BUILD = os.environ.get("ARKERNELS_MAMBA_PEER", "/tmp/mamba_peer")
TOL = 5e-2
TARGET = 1.3  # training tokens/s vs mamba-ssm

CONFIGS = {
    "cuda": {"model": dict(d_model=768, n_layer=24, vocab_size=50280, d_state=16, expand=2), "batch": 8, "L": 2048},
    "cpu": {"model": dict(d_model=64, n_layer=2, vocab_size=512, d_state=16, expand=2), "batch": 2, "L": 128},
}
TRAIN, FWD = "fwd+bwd", "fwd"


# ---------------------------------------------------------------- the peer

_peer_cache: list = []


def _stub_modules() -> list[str]:
    """Empty stand-ins for mamba_ssm's import-time-only dependencies that are not installed."""
    made = []

    def missing(name):
        try:
            importlib.import_module(name)
            return False
        except Exception:  # noqa: BLE001
            return True

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        made.append(name)

    if missing("transformers"):
        module("transformers")
        module("transformers.generation", GenerateDecoderOnlyOutput=type("GenerateDecoderOnlyOutput", (), {}),
               TextStreamer=type("TextStreamer", (), {}))
        module("transformers.utils", WEIGHTS_NAME="pytorch_model.bin", CONFIG_NAME="config.json")
        module("transformers.utils.hub", cached_file=lambda *a, **k: None)
    if missing("huggingface_hub"):
        module("huggingface_hub", PyTorchModelHubMixin=type("PyTorchModelHubMixin", (), {}))
    return made


def _load_peer():
    src = os.path.join(PEER_BUILD, "src")
    if not os.path.isdir(src):
        raise ImportError(f"no mamba-ssm build at {PEER_BUILD} (run .whl/build_mamba_scan.py on the GPU machine)")
    root = os.path.join(src, next(d for d in sorted(os.listdir(src)) if d.startswith("mamba_ssm")))
    for path in ("/tmp/peers", root, PEER_BUILD):  # /tmp/peers: einops (scripts/gpu_check.sh installs it)
        if os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)
    stubs = _stub_modules()
    try:
        scan_cuda = importlib.import_module("selective_scan_cuda")
        from arkernels.testing.peers import _load_without_package_init

        # mamba_ssm/__init__ also imports Mamba-3 (tilelang / newer Triton): skip the package __init__ files.
        mss = _load_without_package_init("mamba_ssm", "mamba_ssm.models.mixer_seq_simple")
        ssi = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
        ssi.selective_scan_cuda = scan_cuda
        simple = importlib.import_module("mamba_ssm.modules.mamba_simple")
        config = importlib.import_module("mamba_ssm.models.config_mamba").MambaConfig
    finally:
        for name in stubs:  # the imported modules keep what they took from the stand-ins
            sys.modules.pop(name, None)
    path = ("non-fused path: nn.Conv1d + selective_scan_fn (causal_conv1d not installed)"
            if simple.causal_conv1d_fn is None else "fused path: causal_conv1d + mamba_inner_fn")
    note = path + (f"; stand-ins for {', '.join(sorted({s.split('.')[0] for s in stubs}))} at import"
                   if stubs else "")
    return mss.MambaLMHeadModel, config, note


def _peer():
    """((MambaLMHeadModel, MambaConfig, note) or None, why it is missing)."""
    if not _peer_cache:
        try:
            _peer_cache.append((_load_peer(), None))
        except Exception as err:  # noqa: BLE001
            _peer_cache.append((None, f"not importable ({type(err).__name__}: {str(err).splitlines()[0][:200]})"))
    return _peer_cache[0]


def providers(device) -> dict[str, str | None]:
    import arkernels

    dev = torch.device(device)
    out: dict[str, str | None] = {"arkernels": None if arkernels.native_available() else "arkernels._C did not load"}
    if dev.type != "cuda":
        out[PEER] = "CUDA only (its selective scan is a CUDA extension)"
    else:
        out[PEER] = _peer()[1]
    return out


# ---------------------------------------------------------------- cases

def _matmul_flops_per_token(m: dict) -> float:
    """2 x the weights of every matmul (in_proj, x_proj, dt_proj, out_proj per layer, and the LM head)."""
    d, n = m["d_model"], m["d_state"]
    di = m["expand"] * d
    r = -(-d // 16)
    per_layer = d * 2 * di + di * (r + 2 * n) + r * di + di * d
    vocab = -(-m["vocab_size"] // 8) * 8
    return 2.0 * (m["n_layer"] * per_layer + d * vocab)


def cases(device, quick: bool) -> list[Case]:
    dev = torch.device(device)
    cfg = CONFIGS["cuda" if dev.type == "cuda" else "cpu"]
    tokens = cfg["batch"] * cfg["L"]
    out = []
    for mode, factor in ((TRAIN, 3.0), (FWD, 1.0)):
        out.append(Case(op=OP, mode=mode, dtype=torch.bfloat16, shape=(cfg["batch"], cfg["L"]), device=str(dev),
                        bytes=0, flops=factor * tokens * _matmul_flops_per_token(cfg["model"]), x=cfg["L"],
                        tags=("headline",), params={"model": cfg["model"]}))
    return out


# ---------------------------------------------------------------- running

_models: dict = {}


def _build(case: Case, name: str):
    """The model of provider `name` on the case's device; every provider gets the same weights."""
    key = (case.device, name)
    if key in _models:
        return _models[key]
    from arkernels.models import Mamba1Config, Mamba1LMHeadModel

    dev = torch.device(case.device)
    m = case.params["model"]
    if ("ours", case.device) not in _models:
        torch.manual_seed(0)
        _models[("ours", case.device)] = Mamba1LMHeadModel(Mamba1Config(**m), impl="fast").to(dev)
    ours = _models[("ours", case.device)]
    if name == "arkernels":
        model = ours
    else:
        loaded, why = _peer()
        if loaded is None:
            raise RuntimeError(f"{PEER} {why}")
        cls, config, _ = loaded
        pcfg = config(d_model=m["d_model"], n_layer=m["n_layer"], vocab_size=m["vocab_size"],
                      ssm_cfg={"layer": "Mamba1", "d_state": m["d_state"], "expand": m["expand"], "d_conv": 4},
                      rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8)
        model = cls(pcfg, device=dev)
        model.load_state_dict(ours.state_dict(), strict=True)
    _models[key] = model
    return model


def _logits(model, ids):
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def _train_step(model, ids, targets, dev):
    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            logits = _logits(model, ids)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
    return step


def _forward(model, ids, dev):
    def fwd():
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            return _logits(model, ids)
    return fwd


def _oracle(case: Case, ids):
    key = ("oracle", case.device, ids.shape)
    if key not in _models:
        ours = _build(case, "arkernels")
        with torch.no_grad():
            _models[key] = ours(ids[:1]).float()  # float32 parameters, no autocast
    return _models[key]



def run(case: Case, providers: list[str]) -> list[Row]:
    from arkernels.testing import relative_error

    dev = torch.device(case.device)
    g = torch.Generator().manual_seed(0)
    vocab = case.params["model"]["vocab_size"]
    ids = torch.randint(0, vocab, case.shape, generator=g).to(dev)
    targets = torch.randint(0, vocab, case.shape, generator=g).to(dev)
    rows = []
    for name in providers:
        row = Row.for_case(case, name)
        try:
            model = _build(case, name)
            if name == PEER:
                row.note = _peer()[0][2]
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
                check = _logits(model, ids[:1])
            row.rel_err, row.tol = relative_error(check, _oracle(case, ids)), TOL
            if not row.rel_err <= TOL:
                row.status = "FAILED"
                row.note = (row.note + "; " if row.note else "") + f"rel err {row.rel_err:.2e} > tol {TOL:.0e}"
            fn = _train_step(model, ids, targets, dev) if case.mode == TRAIN else _forward(model, ids, dev)
            row.time_ms = time_ms(fn, case.device)
            model.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001  (recorded in the row, never fatal)
            row.status, row.note = "error", error_text(err)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- headline

def headline(rows: list[Row], ceilings) -> list[str]:
    head = [r for r in rows if r.op == OP and "headline" in r.tags]
    if not head:
        return []
    on_gpu = head[0].device.startswith("cuda")
    b, L = (int(v) for v in head[0].shape.split("x"))
    tokens = b * L
    lines = [f"## Headline: Mamba-1 LM training throughput, batch {b} x {L} tokens", ""]
    lines.append(("~130M Mamba-1 (d_model 768, 24 layers, vocab 50280, d_state 16, expand 2)" if on_gpu else
                  "Tiny CPU config (not a GPU measurement)")
                 + f"; float32 parameters under autocast(bf16); training step = forward + cross-entropy + "
                   f"backward. Target (on the GPU): arkernels >= {TARGET:.1f}x mamba-ssm tokens/s in training.")
    lines += ["", "| mode | arkernels tokens/s | mamba-ssm tokens/s | ratio | verdict |", "|---|---|---|---|---|"]
    by = {(r.mode, r.provider): r for r in head}
    for mode in (TRAIN, FWD):
        ours, peer = by.get((mode, "arkernels")), by.get((mode, PEER))
        tps = [tokens / (r.time_ms / 1e3) if r is not None and r.time_ms else None for r in (ours, peer)]
        ratio = tps[0] / tps[1] if all(tps) else None
        if mode != TRAIN:
            verdict = "shown, not graded"
        elif not on_gpu:
            verdict = "n/a (CPU run)"
        elif ratio is None:
            verdict = "**MISS** (not measured)"
        else:
            verdict = "**PASS**" if ratio >= TARGET and ours.status == "ok" else "**MISS**"
        fmt = lambda v, r: f"{v:,.0f}" if v else (r.status + (f" ({r.note})" if r and r.note else "") if r else "not run")  # noqa: E731
        lines.append(f"| {mode} | {fmt(tps[0], ours)} | {fmt(tps[1], peer)} | "
                     f"{f'{ratio:.2f}x' if ratio else '—'} | {verdict} |")
    peer_note = next((r.note for r in head if r.provider == PEER and r.note), None)
    if peer_note:
        lines += ["", f"mamba-ssm: {peer_note}."]
    return lines
