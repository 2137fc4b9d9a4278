"""A small VAR-style next-scale prediction transformer (Tian et al., "Visual Autoregressive Modeling",
FoundationVision/VAR), built on arkernels.block_sparse_attention.

An image is a pyramid of token maps of side patch_nums = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) (680 tokens),
each token an index into the codebook of a multi-scale VQ tokenizer (not part of this model). The
transformer predicts every token of scale s at once from the class and all coarser scales:

    input of scale 0: the class embedding (one start token)
    input of scale s > 0: the embeddings of scale s-1's tokens, interpolated (bilinear) to s's grid
    + a learned position embedding per token and a level embedding per scale
    blocks: adaLN transformer blocks conditioned on the class; attention under VAR's block-causal mask
            (query of scale i sees keys of scales <= i: bidirectional inside a scale)
    head: adaLN + linear to the codebook logits.

(VAR feeds the accumulated, upsampled VQ feature map instead of re-embedded tokens, and ties the
conditioning differently; the attention pattern, which is what this library accelerates, is the same.)

Teacher-forced training runs all 680 tokens in one pass under masks.block_causal(scale boundaries);
generation runs scale by scale with a KV cache: each scale's queries see every cached key and their own
scale's, so no mask is needed (the fast impl runs arkernels.decode_attention there). `cached_logits` runs
the generation path on given tokens: its logits equal the teacher-forced ones
(tests/models/test_attention_models.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from arkernels.models._attention import AdaLN, ConditionedBlock
from arkernels.models._lm import check_impl, choose_tokens


@dataclass
class VARConfig:
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    vocab_size: int = 4096      # codebook entries of the multi-scale VQ tokenizer
    num_classes: int = 1000
    d_model: int = 512
    n_layer: int = 8
    n_head: int = 8
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6

    @property
    def boundaries(self) -> list[int]:
        """Start of every scale in the token sequence, then its length: [0, 1, 5, 14, ..., 680]."""
        out = [0]
        for pn in self.patch_nums:
            out.append(out[-1] + pn * pn)
        return out

    @property
    def seq_len(self) -> int:
        return self.boundaries[-1]


class VARTransformer(nn.Module):
    def __init__(self, cfg: VARConfig, impl: str = "reference"):
        super().__init__()
        if not cfg.patch_nums or any(p < 1 for p in cfg.patch_nums):
            raise ValueError(f"patch_nums: expected positive sides, got {cfg.patch_nums}")
        self.config = cfg
        d = cfg.d_model
        self.class_emb = nn.Embedding(cfg.num_classes, d)
        self.word_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Parameter(torch.randn(cfg.seq_len, d) * 0.02)
        self.level_emb = nn.Embedding(len(cfg.patch_nums), d)
        self.blocks = nn.ModuleList(ConditionedBlock(d, cfg.n_head, cfg.mlp_ratio, cfg.norm_eps)
                                    for _ in range(cfg.n_layer))
        self.head_ada = nn.Linear(d, 2 * d)
        self.head_norm = AdaLN(d, cfg.norm_eps)
        self.head = nn.Linear(d, cfg.vocab_size)
        levels = torch.repeat_interleave(torch.arange(len(cfg.patch_nums)),
                                         torch.tensor([p * p for p in cfg.patch_nums]))
        self.register_buffer("levels", levels, persistent=False)
        self._mask = None
        self.set_impl(impl)

    def set_impl(self, impl: str) -> "VARTransformer":
        self.impl = check_impl(impl)
        return self

    # ---- pieces ----

    def _scale_inputs(self, labels, tokens_of_scale, s: int):
        """Input embeddings (B, pn_s^2, d) of scale s: the class for s = 0, else scale s-1's tokens
        embedded and interpolated to scale s's grid."""
        pns = self.config.patch_nums
        if s == 0:
            x = self.class_emb(labels)[:, None]
        else:
            prev = pns[s - 1]
            e = self.word_emb(tokens_of_scale).transpose(1, 2).reshape(labels.shape[0], -1, prev, prev)
            x = F.interpolate(e, size=(pns[s], pns[s]), mode="bilinear", align_corners=False)
            x = x.flatten(2).transpose(1, 2)
        lo, hi = self.config.boundaries[s], self.config.boundaries[s + 1]
        return x + self.pos_emb[lo:hi] + self.level_emb.weight[s]

    def _logits(self, x, cond):
        shift, scale = self.head_ada(F.silu(cond)).chunk(2, dim=-1)
        return self.head(self.head_norm(x, shift, scale))

    def block_causal_mask(self):
        """The teacher-forced mask of the fast impl (arkernels.masks), built once."""
        if self._mask is None:
            from arkernels import masks

            self._mask = masks.block_causal(self.config.boundaries)
        return self._mask

    def _dense_block_causal(self):
        # VAR's own definition: query of level d_q sees key of level d_k iff d_q >= d_k.
        return self.levels[:, None] >= self.levels[None, :]

    def _check(self, labels, tokens=None):
        if labels.dim() != 1:
            raise ValueError(f"labels: expected (batch,), got shape {tuple(labels.shape)}")
        if tokens is not None and (tokens.dim() != 2 or tokens.shape != (labels.shape[0], self.config.seq_len)):
            raise ValueError(f"tokens: expected shape ({labels.shape[0]}, {self.config.seq_len}) (batch, all "
                             f"scales' tokens), got {tuple(tokens.shape)}")

    def _split(self, tokens):
        b = self.config.boundaries
        return [tokens[:, b[s]:b[s + 1]] for s in range(len(self.config.patch_nums))]

    # ---- teacher forcing ----

    def forward(self, labels, tokens):
        """Teacher-forced logits (B, 680, vocab): labels (B,) class ids, tokens (B, 680) every scale's
        ground-truth tokens; the logits at scale s predict tokens[:, scale s] from scales < s."""
        self._check(labels, tokens)
        per_scale = self._split(tokens)
        x = torch.cat([self._scale_inputs(labels, per_scale[s - 1] if s else None, s)
                       for s in range(len(self.config.patch_nums))], dim=1)
        cond = self.class_emb(labels)
        for blk in self.blocks:
            x = blk(x, cond, self.impl, self.block_causal_mask() if self.impl == "fast" else None,
                    self._dense_block_causal)
        return self._logits(x, cond)

    # ---- scale by scale, with a KV cache ----

    def _step(self, labels, prev_tokens, s: int, caches, cond):
        x = self._scale_inputs(labels, prev_tokens, s)
        for blk, cache in zip(self.blocks, caches):  # cached scales plus this one: all visible, no mask
            x = blk(x, cond, self.impl, None, None, cache=cache)
        return self._logits(x, cond)

    @torch.no_grad()
    def cached_logits(self, labels, tokens):
        """The generation path on given tokens: scale by scale with a KV cache, each scale fed the given
        tokens of the scale before. Equals forward(labels, tokens) up to rounding."""
        self._check(labels, tokens)
        per_scale = self._split(tokens)
        caches = [{} for _ in self.blocks]
        cond = self.class_emb(labels)
        return torch.cat([self._step(labels, per_scale[s - 1] if s else None, s, caches, cond)
                          for s in range(len(self.config.patch_nums))], dim=1)

    @torch.no_grad()
    def generate(self, labels, *, greedy: bool = True, temperature: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None):
        """Tokens (B, 680) of every scale, generated coarse to fine: one forward per scale over that scale's
        tokens with a KV cache. Greedy, or sampling with temperature / top_k (0: all entries)."""
        self._check(labels)
        caches = [{} for _ in self.blocks]
        cond = self.class_emb(labels)
        out, prev = [], None
        for s in range(len(self.config.patch_nums)):
            logits = self._step(labels, prev, s, caches, cond).float()
            prev = choose_tokens(logits, greedy, temperature, top_k, generator)
            out.append(prev)
        return torch.cat(out, dim=1)
