"""Pieces shared by the Mamba-1 and Mamba-2 language models: config fields, RMSNorm, the pre-norm residual
block stack, the tied LM head, the decode cache and the generate loop.

Parameter names and the block semantics follow mamba-ssm 2.x's MambaLMHeadModel with fused_add_norm off
(a mamba-ssm state dict loads with strict=True): per block, residual = hidden + residual,
hidden = mixer(norm(residual)), with the residual optionally carried in float32; at the end,
logits = lm_head(norm_f(hidden + residual)).

Each mixer runs its scans either with the pure-PyTorch references (impl="reference") or with the arkernels
ops (impl="fast", backend="auto"); ``set_impl`` switches a built model in place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

IMPLS = ("reference", "fast")


def check_impl(impl) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    return impl


def kernels(impl: str) -> SimpleNamespace:
    """The conv / decode-step functions of one impl (the scans are chosen by each mixer)."""
    if impl == "reference":
        from arkernels.reference import causal_conv1d_ref, causal_conv1d_update_ref, selective_state_update_ref

        return SimpleNamespace(conv=causal_conv1d_ref, conv_update=causal_conv1d_update_ref,
                               state_update=selective_state_update_ref)
    import arkernels

    return SimpleNamespace(conv=arkernels.causal_conv1d, conv_update=arkernels.causal_conv1d_update,
                           state_update=arkernels.selective_state_update)


@dataclass
class LMConfig:
    """Fields shared by both models (names as in mamba-ssm's MambaConfig / mixer arguments)."""

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50280
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    initializer_range: float = 0.02

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size if m <= 1 else -(-self.vocab_size // m) * m


def init_dt_bias(n: int, cfg: LMConfig) -> torch.Tensor:
    """dt sampled log-uniformly in [dt_min, dt_max] (floored), returned as its inverse softplus, so that
    softplus(bias) starts at dt (mamba-ssm's initialisation)."""
    dt = torch.exp(torch.rand(n) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
    dt = dt.clamp(min=cfg.dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, in float32, returned in x's dtype."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        # torch's fused rms_norm (one kernel each way on CUDA), on float32 inputs so that it is float32 math.
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


@dataclass
class LayerState:
    """One mixer's decode state: the last width - 1 conv inputs and the SSM state (float32)."""

    conv_state: torch.Tensor | None = None
    ssm_state: torch.Tensor | None = None


@dataclass
class InferenceCache:
    """Decode state of a whole model. Prefill (seqlen_offset == 0) fills it, each decode step advances it."""

    seqlen_offset: int = 0
    layers: dict = field(default_factory=dict)

    def layer(self, i: int) -> LayerState:
        return self.layers.setdefault(i, LayerState())


class Block(nn.Module):
    """Pre-norm residual block: norm.weight and mixer.* as in mamba-ssm's Block (no MLP)."""

    def __init__(self, mixer: nn.Module, d_model: int, eps: float, residual_in_fp32: bool):
        super().__init__()
        self.norm = RMSNorm(d_model, eps)
        self.mixer = mixer
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden, residual, state: LayerState | None, decoding: bool):
        residual = hidden if residual is None else hidden + residual
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        if decoding:
            return self.mixer.step(hidden, state), residual
        return self.mixer(hidden, state), residual


class Backbone(nn.Module):
    def __init__(self, cfg: LMConfig, make_mixer):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            Block(make_mixer(i), cfg.d_model, cfg.norm_epsilon, cfg.residual_in_fp32) for i in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_epsilon)

    def forward(self, input_ids, cache: InferenceCache | None = None):
        hidden, residual = self.embedding(input_ids), None
        decoding = cache is not None and cache.seqlen_offset > 0
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, None if cache is None else cache.layer(i), decoding)
        residual = hidden if residual is None else hidden + residual
        return self.norm_f(residual.to(self.norm_f.weight.dtype))


class MambaLMBase(nn.Module):
    """backbone + lm_head (tied to the embedding when cfg.tie_embeddings). Subclasses give the mixer."""

    def __init__(self, cfg: LMConfig, make_mixer, impl: str = "reference"):
        super().__init__()
        self.config = cfg
        self.backbone = Backbone(cfg, make_mixer)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        self.set_impl(impl)

    def _init_weights(self):
        """As mamba-ssm: embedding ~ N(0, 0.02); Linear biases zero; out_proj (kaiming uniform, torch's
        default) scaled by 1/sqrt(n_layer) (one residual branch per layer). The mixers set A_log, D, dt."""
        nn.init.normal_(self.backbone.embedding.weight, std=self.config.initializer_range)
        with torch.no_grad():
            for layer in self.backbone.layers:
                layer.mixer.out_proj.weight /= math.sqrt(self.config.n_layer)

    @property
    def impl(self) -> str:
        return self._impl

    def set_impl(self, impl: str) -> "MambaLMBase":
        self._impl = check_impl(impl)
        for layer in self.backbone.layers:
            layer.mixer.set_impl(impl)
        return self

    def forward(self, input_ids, cache: InferenceCache | None = None, num_last_tokens: int = 0):
        """Logits (batch, L, padded vocab). With a cache: prefill when cache.seqlen_offset == 0 (the
        states are stored), else one decode step (L must be 1); the offset advances by L."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected (batch, L), got shape {tuple(input_ids.shape)}")
        if cache is not None and cache.seqlen_offset > 0 and input_ids.shape[1] != 1:
            raise ValueError(f"input_ids: a decode step takes one token per row, got L = {input_ids.shape[1]}")
        hidden = self.backbone(input_ids, cache)
        if num_last_tokens > 0:
            hidden = hidden[:, -num_last_tokens:]
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return self.lm_head(hidden)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, *, greedy: bool = True, temperature: float = 1.0,
                 top_k: int = 0, generator: torch.Generator | None = None):
        """Prompt (batch, L) -> (batch, L + max_new_tokens): the prompt runs through the parallel scans once
        (prefill), then each new token is one decode step. Greedy, or sampling with temperature / top_k
        (top_k 0: the whole vocabulary). Padding entries of the vocabulary are never chosen."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected >= 0, got {max_new_tokens}")
        cache = InferenceCache()
        out = [input_ids]
        if max_new_tokens == 0:
            return input_ids
        logits = self(input_ids, cache, num_last_tokens=1)[:, -1]
        for step in range(max_new_tokens):
            token = choose_tokens(logits[:, :self.config.vocab_size].float(), greedy, temperature, top_k, generator)
            out.append(token[:, None])
            if step + 1 < max_new_tokens:
                logits = self(token[:, None], cache)[:, -1]
        return torch.cat(out, dim=1)


def choose_tokens(logits, greedy, temperature, top_k, generator):
    """Token ids of shape logits.shape[:-1]: the argmax, or a sample with temperature / top_k (0: all)."""
    if greedy:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0 when sampling, got {temperature}")
    logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])
