"""Mamba-1 / Mamba-2 language models (arkernels.models): fast vs reference (logits and parameter gradients),
decode path vs full re-run, mamba-ssm state dict loading against an independent float64 forward written
here, bf16 on the fast path. CPU cases run everywhere; the same cases run on CUDA where a GPU is present.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from arkernels.models import Mamba1Config, Mamba1LMHeadModel
from arkernels.testing import relative_error

from arkernels.models import Mamba2Config, Mamba2LMHeadModel

SEQLEN = 37
VOCAB = 101
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _config(kind):
    if kind == "mamba1":
        return Mamba1Config(d_model=64, n_layer=2, vocab_size=VOCAB, d_state=16)
    # headdim 16 -> 8 heads, 2 groups; chunk 16 so that 37 tokens span three chunks.
    return Mamba2Config(d_model=64, n_layer=2, vocab_size=VOCAB, d_state=16, headdim=16, ngroups=2, chunk_size=16)


def _model(kind, device, impl="reference", seed=0):
    torch.manual_seed(seed)
    cls = Mamba1LMHeadModel if kind == "mamba1" else Mamba2LMHeadModel
    return cls(_config(kind), impl=impl).to(device)


def _ids(device, batch=2, L=SEQLEN, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, L), generator=g).to(device)


KINDS = ["mamba1", "mamba2"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_fast_matches_reference_logits_and_grads(kind, device):
    model = _model(kind, device)
    ids = _ids(device)
    outs = {}
    for impl in ("reference", "fast"):
        model.set_impl(impl)
        model.zero_grad(set_to_none=True)
        logits = model(ids)
        # A random projection of the logits as the loss: every logit gets a gradient.
        w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2)).to(device)
        (logits * w).sum().backward()
        outs[impl] = (logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()})
    (ref, ref_g), (fast, fast_g) = outs["reference"], outs["fast"]
    assert model.impl == "fast"
    assert relative_error(fast, ref) < 1e-4
    assert ref_g.keys() == fast_g.keys() and len(ref_g) > 0
    for name in ref_g:
        err = relative_error(fast_g[name], ref_g[name])
        assert err < 1e-4, f"{name}: gradient relative error {err:.2e}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_decode_equals_full_rerun(kind, impl, device):
    model = _model(kind, device, impl).eval()
    prompt = _ids(device, batch=3, L=11)
    new = 12
    got = model.generate(prompt, new)
    seq = prompt
    with torch.no_grad():
        for _ in range(new):
            nxt = model(seq)[:, -1, :VOCAB].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    assert got.shape == (3, 11 + new)
    assert torch.equal(got, seq)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_decode_logits_match_parallel_logits(kind, device):
    """Logits of each decode step equal the parallel forward's at that position (not only the argmax)."""
    from arkernels.models import InferenceCache

    model = _model(kind, device, "fast").eval()
    ids = _ids(device, batch=2, L=20)
    with torch.no_grad():
        full = model(ids)
        cache = InferenceCache()
        steps = [model(ids[:, :8], cache)]
        for t in range(8, 20):
            steps.append(model(ids[:, t:t + 1], cache))
    assert relative_error(torch.cat(steps, dim=1), full) < 1e-5
    assert cache.seqlen_offset == 20


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_runs_and_respects_vocab(kind):
    model = _model(kind, "cpu", "fast").eval()
    g = torch.Generator().manual_seed(3)
    out = model.generate(_ids("cpu", batch=2, L=5), 6, greedy=False, temperature=0.8, top_k=5, generator=g)
    assert out.shape == (2, 11) and int(out.max()) < VOCAB
    with pytest.raises(ValueError, match="temperature"):
        model.generate(_ids("cpu", batch=1, L=3), 2, greedy=False, temperature=0.0)


def test_set_impl_rejects_unknown():
    model = _model("mamba1", "cpu")
    with pytest.raises(ValueError, match="impl"):
        model.set_impl("cuda")


# ---------------------------------------------------------------- mamba-ssm state dicts

def _mamba1_state_dict(cfg, g):
    """Keys and shapes of mamba-ssm 2.x MambaLMHeadModel (ssm_cfg layer Mamba1, rms_norm, no MLP)."""
    d, di, n, w = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv
    r = math.ceil(d / 16)
    V = -(-cfg.vocab_size // 8) * 8
    rnd = lambda *s, scale=0.1: torch.randn(*s, generator=g) * scale  # noqa: E731
    sd = {"backbone.embedding.weight": rnd(V, d, scale=0.5)}
    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        sd[p + "norm.weight"] = 1 + rnd(d)
        sd[p + "mixer.in_proj.weight"] = rnd(2 * di, d, scale=d ** -0.5)
        sd[p + "mixer.conv1d.weight"] = rnd(di, 1, w, scale=0.4)
        sd[p + "mixer.conv1d.bias"] = rnd(di)
        sd[p + "mixer.x_proj.weight"] = rnd(r + 2 * n, di, scale=di ** -0.5)
        sd[p + "mixer.dt_proj.weight"] = rnd(di, r, scale=r ** -0.5)
        sd[p + "mixer.dt_proj.bias"] = torch.log(torch.expm1(torch.rand(di, generator=g) * 0.1 + 1e-3))
        sd[p + "mixer.A_log"] = torch.log(torch.rand(di, n, generator=g) * 8 + 0.5)
        sd[p + "mixer.D"] = 1 + rnd(di)
        sd[p + "mixer.out_proj.weight"] = rnd(d, di, scale=di ** -0.5)
    sd["backbone.norm_f.weight"] = 1 + rnd(d)
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]  # tied: mamba-ssm saves both keys
    return sd


def _mamba2_state_dict(cfg, g):
    d, di, n, w, G = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.ngroups
    h = di // cfg.headdim
    V = -(-cfg.vocab_size // 8) * 8
    conv_dim = di + 2 * G * n
    rnd = lambda *s, scale=0.1: torch.randn(*s, generator=g) * scale  # noqa: E731
    sd = {"backbone.embedding.weight": rnd(V, d, scale=0.5)}
    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        sd[p + "norm.weight"] = 1 + rnd(d)
        sd[p + "mixer.in_proj.weight"] = rnd(2 * di + 2 * G * n + h, d, scale=d ** -0.5)
        sd[p + "mixer.conv1d.weight"] = rnd(conv_dim, 1, w, scale=0.4)
        sd[p + "mixer.conv1d.bias"] = rnd(conv_dim)
        sd[p + "mixer.dt_bias"] = torch.log(torch.expm1(torch.rand(h, generator=g) * 0.1 + 1e-3))
        sd[p + "mixer.A_log"] = torch.log(torch.rand(h, generator=g) * 15 + 1)
        sd[p + "mixer.D"] = 1 + rnd(h)
        sd[p + "mixer.norm.weight"] = 1 + rnd(di)
        sd[p + "mixer.out_proj.weight"] = rnd(d, di, scale=di ** -0.5)
    sd["backbone.norm_f.weight"] = 1 + rnd(d)
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    return sd


def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _conv_silu(x, weight, bias):
    """x (b, L, c) through mamba-ssm's nn.Conv1d(padding = W - 1)[..., :L] and silu."""
    L, W = x.shape[1], weight.shape[-1]
    y = F.conv1d(x.transpose(1, 2), weight, bias, padding=W - 1, groups=x.shape[2])[..., :L]
    return F.silu(y).transpose(1, 2)


def _mamba1_mixer_oracle(sd, p, cfg, h):
    di, n = cfg.d_inner, cfg.d_state
    r = math.ceil(cfg.d_model / 16)
    x, z = (h @ sd[p + "in_proj.weight"].T).split(di, dim=-1)
    x = _conv_silu(x, sd[p + "conv1d.weight"], sd[p + "conv1d.bias"])
    dt, B, C = (x @ sd[p + "x_proj.weight"].T).split([r, n, n], dim=-1)
    dt = F.softplus(dt @ sd[p + "dt_proj.weight"].T + sd[p + "dt_proj.bias"])  # (b, L, di)
    A = -torch.exp(sd[p + "A_log"])
    s = x.new_zeros(x.shape[0], di, n)
    ys = []
    for t in range(x.shape[1]):  # the recurrence one token at a time
        s = torch.exp(dt[:, t, :, None] * A) * s + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((s * C[:, t, None, :]).sum(-1) + sd[p + "D"] * x[:, t])
    y = torch.stack(ys, dim=1) * F.silu(z)
    return y @ sd[p + "out_proj.weight"].T


def _mamba2_mixer_oracle(sd, p, cfg, h):
    di, n, G, P = cfg.d_inner, cfg.d_state, cfg.ngroups, cfg.headdim
    H = di // P
    z, xBC, dt = (h @ sd[p + "in_proj.weight"].T).split([di, di + 2 * G * n, H], dim=-1)
    xBC = _conv_silu(xBC, sd[p + "conv1d.weight"], sd[p + "conv1d.bias"])
    x, B, C = xBC.split([di, G * n, G * n], dim=-1)
    b, L = x.shape[:2]
    x = x.reshape(b, L, H, P)
    B = B.reshape(b, L, G, n).repeat_interleave(H // G, dim=2)  # head hh reads group hh // (H / G)
    C = C.reshape(b, L, G, n).repeat_interleave(H // G, dim=2)
    dt = F.softplus(dt + sd[p + "dt_bias"])  # (b, L, H)
    A = -torch.exp(sd[p + "A_log"])
    s = x.new_zeros(b, H, P, n)
    ys = []
    for t in range(L):
        s = torch.exp(dt[:, t] * A)[:, :, None, None] * s + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None]
        ys.append((s * C[:, t, :, None]).sum(-1) + sd[p + "D"][:, None] * x[:, t])
    y = torch.stack(ys, dim=1).reshape(b, L, di) * F.silu(z)  # gate, then the grouped RMSNorm
    yg = y.reshape(b, L, G, di // G)
    y = (yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + 1e-5)).reshape(b, L, di) * sd[p + "norm.weight"]
    return y @ sd[p + "out_proj.weight"].T


def _lm_oracle(sd, cfg, ids, mixer):
    """mamba-ssm's MambaLMHeadModel forward (fused_add_norm off), in float64."""
    sd = {k: v.double() for k, v in sd.items()}
    hidden, residual = sd["backbone.embedding.weight"][ids], None
    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        residual = hidden if residual is None else hidden + residual
        hidden = mixer(sd, p + "mixer.", cfg, _rms(residual, sd[p + "norm.weight"]))
    hidden = _rms(hidden + residual, sd["backbone.norm_f.weight"])
    return hidden @ sd["lm_head.weight"].T


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_mamba_ssm_state_dict_loads_and_matches_oracle(kind, device):
    model = _model(kind, device)
    cfg = model.config
    g = torch.Generator().manual_seed(4)
    sd = (_mamba1_state_dict if kind == "mamba1" else _mamba2_state_dict)(cfg, g)
    assert set(sd) == set(model.state_dict()), set(sd) ^ set(model.state_dict())
    model.load_state_dict(sd, strict=True)
    assert model.lm_head.weight is model.backbone.embedding.weight  # still tied after loading
    ids = _ids(device)
    oracle = _lm_oracle(sd, cfg, ids.cpu(), _mamba1_mixer_oracle if kind == "mamba1" else _mamba2_mixer_oracle)
    tol = 1e-5 if device == "cpu" else 5e-5  # cuBLAS fp32 sums in its own order
    with torch.no_grad():
        for impl in ("reference", "fast"):
            logits = model.set_impl(impl)(ids)
            err = relative_error(logits, oracle)
            assert err < tol, f"{impl}: logits relative error {err:.2e} vs the float64 oracle"
    # Round trip: our state dict has mamba-ssm's keys and loads into a fresh model.
    fresh = _model(kind, device, seed=5)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(ids), model.set_impl("reference")(ids))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_fast_forward_close_to_fp32(kind, device):
    model = _model(kind, device, "fast")
    ids = _ids(device)
    with torch.no_grad():
        ref = model(ids).float()
        if device == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                auto = model(ids)
            assert auto.dtype == torch.bfloat16
            assert relative_error(auto, ref) < 3e-2
        bf = model.to(torch.bfloat16)(ids)
    assert bf.dtype == torch.bfloat16
    assert relative_error(bf, ref) < 5e-2


# ---- Mamba-1 training step under autocast: layouts and dtypes at the scan and the parameters ----

@pytest.mark.parametrize("x_lk", [False, True])
@pytest.mark.parametrize("out_lm, splits", [(False, (5,)), (False, (2, 3)), (True, (5,))])
def test_mamba1_proj_gradcheck(x_lk, out_lm, splits):
    from arkernels.models.mamba1 import _proj

    g = torch.Generator().manual_seed(3)
    weight = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(2, 6, 4, dtype=torch.float64, generator=g)  # (batch, L, k)
    x = (x if x_lk else x.transpose(1, 2).contiguous()).requires_grad_()

    def f(w, x):
        out = _proj(w, x, x_lk=x_lk, out_lm=out_lm, splits=None if out_lm else splits)
        return out if out_lm else torch.cat(out, dim=1)

    want = torch.einsum("mk,blk->bml", weight, x if x_lk else x.transpose(1, 2))
    got = f(weight, x)
    torch.testing.assert_close(got.transpose(1, 2) if out_lm else got, want)
    assert torch.autograd.gradcheck(f, (weight, x))


def test_mamba1_split_dt_bc():
    from arkernels.models.mamba1 import _SplitDtBC

    x = torch.randn(2, 3 + 2 * 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    dt, B, C = _SplitDtBC.apply(x, 3, 4)
    assert B.is_contiguous() and C.is_contiguous()
    for got, want in zip((dt, B, C), x.split([3, 4, 4], dim=1)):
        assert torch.equal(got, want)
    assert torch.autograd.gradcheck(lambda x: _SplitDtBC.apply(x, 3, 4), (x.requires_grad_(),))


@pytest.mark.parametrize("device", DEVICES)
def test_mamba1_autocast_step_layouts_and_grads(device):
    """autocast(bf16) training step, impl="fast": the scan gets contiguous bf16 u, delta, B, C, z and a
    contiguous dout (strided ones are copied by the op, forward and backward), every parameter gradient is
    float32 in its parameter's layout (AccumulateGrad copies any other), and the gradients stay close to
    the float32 step's."""
    model = _model("mamba1", device, "fast")
    ids = _ids(device)
    seen = []
    for layer in model.backbone.layers:
        mixer = layer.mixer
        scan = mixer._scan

        def checked(u, delta, A, B, C, D, z, *rest, _scan=scan):
            for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
                if torch.is_autocast_enabled(device):
                    assert t.dtype == torch.bfloat16, name
                assert t.is_contiguous(), name
            out = _scan(u, delta, A, B, C, D, z, *rest)
            if out.requires_grad:
                out.register_hook(lambda g: seen.append((g.dtype, g.is_contiguous())))
            return out

        mixer._scan = checked
    grads = {}
    for amp in (False, True):
        model.zero_grad(set_to_none=True)
        seen.clear()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            logits = model(ids)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids.reshape(-1))
        loss.backward()
        assert seen == [(torch.bfloat16 if amp else torch.float32, True)] * len(model.backbone.layers)
        for name, p in model.named_parameters():
            assert p.grad.dtype == torch.float32 and p.grad.stride() == p.stride(), name
        grads[amp] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name in grads[False]:
        err = relative_error(grads[True][name], grads[False][name])
        assert err < 5e-2, f"{name}: bf16 gradient relative error {err:.2e}"
