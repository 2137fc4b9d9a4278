"""The attention models (arkernels.models.var, arkernels.models.acdit): fast (arkernels.block_sparse_attention
with arkernels.masks) against reference (SDPA with the dense mask each model writes from its own definition),
logits / outputs and every parameter gradient; VAR's teacher-forced logits against its scale-by-scale KV-cache
path and greedy generation; ACDiT's training outputs against block-by-block inference with cached clean
keys/values. CPU cases run everywhere (the fast impl takes the cpu backend there); the CUDA cases run the
Triton kernels where a GPU is present."""
from __future__ import annotations

import pytest
import torch

from arkernels.models.acdit import ACDiTConfig, ACDiTStack, scam_dense
from arkernels.models.var import VARConfig, VARTransformer
from arkernels.testing import relative_error

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# head dim 32 (d_model 64, 2 heads); patch sides 1..6 (91 tokens): scales cross every tile boundary.
VAR_SMALL = VARConfig(patch_nums=(1, 2, 3, 4, 5, 6), vocab_size=97, num_classes=7, d_model=64, n_layer=2, n_head=2)
ACDIT_SMALL = ACDiTConfig(num_blocks=3, block_size=5, d_model=64, n_layer=2, n_head=2)
FP32_TOL = 1e-4
# fp32 on the GPU: the Triton kernels' dots are tf32 (docs/ops/block_sparse_attention.md, Numerics: 2e-3 on
# outputs, twice that on gradients); the reference impl (SDPA) computes in full fp32.
TF32_TOL = 2e-3


def _var(device, impl, seed=0, cfg=VAR_SMALL):
    torch.manual_seed(seed)
    return VARTransformer(cfg, impl=impl).to(device)


def _var_inputs(device, batch=3, seed=1, cfg=VAR_SMALL):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=g)
    return labels.to(device), tokens.to(device)


def _param_grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_fast_matches_reference(model, forward, weights):
    """forward(model) -> (output, extra tensors); the outputs, extras and every parameter gradient of
    sum(output * weights) agree between the two impls."""
    results = {}
    for impl in ("reference", "fast"):
        model.set_impl(impl)
        out, extras = forward(model)
        grads = _param_grads(model, (out * weights).sum())
        results[impl] = ([out.detach()] + [e.grad.detach() for e in extras], grads)
    (ref_outs, ref_grads), (fast_outs, fast_grads) = results["reference"], results["fast"]
    tol = TF32_TOL if weights.is_cuda else FP32_TOL
    for i, (f, r) in enumerate(zip(fast_outs, ref_outs)):
        assert relative_error(f, r) < tol, f"output {i}"
    assert ref_grads.keys() == fast_grads.keys() and len(ref_grads) > 10
    for name in ref_grads:
        assert relative_error(fast_grads[name], ref_grads[name]) < 2 * tol, name


@pytest.mark.parametrize("device", DEVICES)
def test_var_fast_matches_reference_logits_and_grads(device):
    model = _var(device, "reference")
    labels, tokens = _var_inputs(device)
    weights = torch.randn(tokens.shape + (VAR_SMALL.vocab_size,), generator=torch.Generator().manual_seed(2)).to(device)
    _assert_fast_matches_reference(model, lambda m: (m(labels, tokens), []), weights)


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("device", DEVICES)
def test_var_cached_scales_equal_teacher_forcing(impl, device):
    model = _var(device, impl)
    labels, tokens = _var_inputs(device)
    with torch.no_grad():
        forced = model(labels, tokens)
    cached = model.cached_logits(labels, tokens)
    assert cached.shape == forced.shape
    assert relative_error(cached, forced) < FP32_TOL


@pytest.mark.parametrize("device", DEVICES)
def test_var_greedy_generation_is_the_argmax_of_teacher_forcing(device):
    model = _var(device, "fast")
    labels, _ = _var_inputs(device)
    tokens = model.generate(labels)
    assert tokens.shape == (labels.shape[0], VAR_SMALL.seq_len)
    with torch.no_grad():
        logits = model(labels, tokens).float()
    # Scale s's tokens are the argmax of logits computed from scales < s, which teacher forcing on the
    # generated tokens recomputes. Where the top two logits are within rounding, either is acceptable.
    top2 = logits.topk(2, dim=-1).values
    decided = (top2[..., 0] - top2[..., 1]) > 1e-4
    assert decided.float().mean() > 0.99
    assert torch.equal(logits.argmax(-1)[decided], tokens[decided])


def test_var_sampling_is_reproducible_and_bad_arguments_raise():
    model = _var("cpu", "fast")
    labels, tokens = _var_inputs("cpu")
    a = model.generate(labels, greedy=False, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(labels, greedy=False, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and int(a.max()) < VAR_SMALL.vocab_size
    with pytest.raises(ValueError, match=r"tokens: expected shape \(3, 91\)"):
        model(labels, tokens[:, :-1])
    with pytest.raises(ValueError, match=r"labels: expected \(batch,\)"):
        model(labels[:, None], tokens)
    with pytest.raises(ValueError, match=r"temperature: expected > 0"):
        model.generate(labels, greedy=False, temperature=0.0)
    with pytest.raises(ValueError, match="impl"):
        model.set_impl("flash")


def test_var_default_config_is_the_paper_pyramid():
    cfg = VARConfig()
    assert cfg.boundaries == [0, 1, 5, 14, 30, 55, 91, 155, 255, 424, 680]


# ---- ACDiT ----

def _acdit(device, impl, seed=0):
    torch.manual_seed(seed)
    return ACDiTStack(ACDIT_SMALL, impl=impl).to(device)


def _acdit_inputs(device, batch=2, seed=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, ACDIT_SMALL.seq_len, ACDIT_SMALL.d_model, generator=g)
    cond = torch.randn(batch, ACDIT_SMALL.seq_len, ACDIT_SMALL.d_model, generator=g)
    return x.to(device), cond.to(device)


def test_scam_dense_is_the_papers_rule():
    n, bs = 3, 2
    m = scam_dense(n, bs)
    for q in range(2 * n * bs):
        for k in range(2 * n * bs):
            qb, kb = q // bs, k // bs
            if qb < n:  # clean c_qb: clean blocks up to itself
                want = kb <= qb
            else:  # noisy n_(qb-n): clean blocks before it, and itself
                want = kb < qb - n or kb == qb
            assert bool(m[q, k]) == want, (q, k)


@pytest.mark.parametrize("device", DEVICES)
def test_acdit_fast_matches_reference_outputs_and_grads(device):
    model = _acdit(device, "reference")
    x, cond = _acdit_inputs(device)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(device)

    def forward(m):
        xi = x.clone().requires_grad_(True)
        return m(xi, cond), [xi]

    _assert_fast_matches_reference(model, forward, w)


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("device", DEVICES)
def test_acdit_block_by_block_inference_equals_training(impl, device):
    model = _acdit(device, impl)
    x, cond = _acdit_inputs(device)
    with torch.no_grad():
        full = model(x, cond)
    n, bs = ACDIT_SMALL.num_blocks, ACDIT_SMALL.block_size
    caches = model.new_cache()
    for i in range(n):
        clean, noisy = slice(i * bs, (i + 1) * bs), slice((n + i) * bs, (n + i + 1) * bs)
        denoised = model.denoise_step(x[:, noisy], cond[:, noisy], caches)
        assert relative_error(denoised, full[:, noisy]) < FP32_TOL, f"noisy block {i}"
        out_clean = model.append_clean(x[:, clean], cond[:, clean], caches)
        assert relative_error(out_clean, full[:, clean]) < FP32_TOL, f"clean block {i}"
    assert caches[0]["k"].shape[2] == n * bs  # only clean keys were kept


def test_acdit_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_blocks, block_size"):
        ACDiTStack(ACDiTConfig(num_blocks=0, block_size=4, d_model=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="n_head: expected a divisor"):
        ACDiTStack(ACDiTConfig(num_blocks=2, block_size=4, d_model=30, n_layer=1, n_head=4))
    model = _acdit("cpu", "fast")
    x, cond = _acdit_inputs("cpu")
    with pytest.raises(ValueError, match=r"x: expected \(batch, 30, d_model\)"):
        model(x[:, :-1], cond)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_var_fast_low_precision_close_to_fp32_reference_cuda(dtype):
    cfg = VARConfig(vocab_size=257, num_classes=5, d_model=256, n_layer=2, n_head=4)  # 680 tokens, head dim 64
    model = _var("cuda", "reference", cfg=cfg)
    labels, tokens = _var_inputs("cuda", cfg=cfg)
    with torch.no_grad():
        ref = model(labels, tokens)
        model.set_impl("fast")
        with torch.autocast("cuda", dtype=dtype):
            fast = model(labels, tokens)
    assert relative_error(fast.float(), ref) < 2e-2


def test_var_fast_under_torch_compile_fullgraph():
    """The teacher-forced pass compiles as one graph once the mask's layout exists (the first eager call
    builds it: building a layout is data-dependent and is not traced)."""
    model = _var("cpu", "fast")
    labels, tokens = _var_inputs("cpu")
    eager = model(labels, tokens)
    compiled = torch.compile(model, fullgraph=True)(labels, tokens)
    assert relative_error(compiled, eager) < FP32_TOL
    compiled.sum().backward()
    assert all(p.grad is not None for p in model.blocks.parameters())
