"""An ACDiT-style block stack (Hu et al., "ACDiT: Interpolating Autoregressive Conditional Modeling and
Diffusion Transformer", thunlp/ACDiT) with the Skip-Causal Attention Mask (SCAM), built on
arkernels.block_sparse_attention.

Training sequence: num_blocks clean blocks c_0..c_{n-1} of block_size tokens, then the noisy blocks
n_0..n_{n-1} (2 n block_size tokens). SCAM: c_i sees c_0..c_i; n_i sees c_0..c_{i-1} and itself; nothing
else sees a noisy block. The condition (e.g. the diffusion timestep embedding) is per token, so clean
and noisy tokens carry their own.

Inference denoises one block at a time: n_i attends to the cached keys/values of c_0..c_{i-1} and to
itself; once denoised, c_i is run once and its keys/values appended to the cache. With SCAM that
reproduces the training-time outputs exactly (tests/models/test_attention_models.py): `denoise_step`
is the inference call, `append_clean` the cache update.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from arkernels.models._attention import ConditionedBlock
from arkernels.models._lm import check_impl


@dataclass
class ACDiTConfig:
    num_blocks: int = 16
    block_size: int = 256
    d_model: int = 512
    n_layer: int = 4
    n_head: int = 8
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6

    @property
    def seq_len(self) -> int:
        return 2 * self.num_blocks * self.block_size


def scam_dense(num_blocks: int, block_size: int) -> torch.Tensor:
    """The SCAM as a dense (L, L) bool matrix, written from the paper's rule (the reference impl's mask)."""
    idx = torch.arange(2 * num_blocks * block_size)
    blk = idx // block_size
    qb, kb = blk[:, None], blk[None, :]
    clean_q, clean_k = qb < num_blocks, kb < num_blocks
    return (clean_q & clean_k & (qb >= kb)) | (~clean_q & clean_k & (qb - num_blocks > kb)) | (qb == kb)


class ACDiTStack(nn.Module):
    """n_layer adaLN transformer blocks over [clean | noisy] tokens (B, 2 n bs, d) with SCAM."""

    def __init__(self, cfg: ACDiTConfig, impl: str = "reference"):
        super().__init__()
        if cfg.num_blocks < 1 or cfg.block_size < 1:
            raise ValueError(f"num_blocks, block_size: expected >= 1, got {cfg.num_blocks}, {cfg.block_size}")
        self.config = cfg
        self.blocks = nn.ModuleList(ConditionedBlock(cfg.d_model, cfg.n_head, cfg.mlp_ratio, cfg.norm_eps)
                                    for _ in range(cfg.n_layer))
        self._mask = None
        self.set_impl(impl)

    def set_impl(self, impl: str) -> "ACDiTStack":
        self.impl = check_impl(impl)
        return self

    def scam(self):
        """The SCAM of the fast impl (arkernels.masks.skip_causal), built once."""
        if self._mask is None:
            from arkernels import masks

            self._mask = masks.skip_causal(self.config.num_blocks, self.config.block_size)
        return self._mask

    def forward(self, x, cond):
        """Training: x (B, 2 n bs, d) = [clean blocks | noisy blocks], cond (B, 2 n bs, d) or (B, d)."""
        cfg = self.config
        if x.dim() != 3 or x.shape[1] != cfg.seq_len:
            raise ValueError(f"x: expected (batch, {cfg.seq_len}, d_model), got {tuple(x.shape)}")
        mask = self.scam() if self.impl == "fast" else None
        dense = lambda: scam_dense(cfg.num_blocks, cfg.block_size)  # noqa: E731
        for blk in self.blocks:
            x = blk(x, cond, self.impl, mask, dense)
        return x

    # ---- inference: one block at a time, clean keys/values cached per layer ----

    def new_cache(self) -> list[dict]:
        return [{} for _ in self.blocks]

    def _run(self, x, cond, caches, keep: bool):
        for blk, cache in zip(self.blocks, caches):  # the cached clean blocks and this block: all visible
            step_cache = cache if keep else dict(cache)  # a noisy block's keys/values are not kept
            x = blk(x, cond, self.impl, None, None, cache=step_cache)
        return x

    @torch.no_grad()
    def denoise_step(self, x_noisy, cond, caches):
        """One noisy block (B, bs, d) against the cached clean blocks before it; the cache is unchanged."""
        return self._run(x_noisy, cond, caches, keep=False)

    @torch.no_grad()
    def append_clean(self, x_clean, cond, caches):
        """Runs a (denoised) clean block (B, bs, d) against the cache and appends its keys/values."""
        return self._run(x_clean, cond, caches, keep=True)
