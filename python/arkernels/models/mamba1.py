"""Mamba-1 block and language model, with mamba-ssm 2.x's parameter names and shapes
(``backbone.layers.{i}.mixer.{in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj}``).

Mixer, per token of hidden (batch, L, d_model), d_inner = expand * d_model:
    x, z   = in_proj(hidden)                          (2 * d_inner, no bias)
    x      = silu(causal depthwise conv1d(x))          (width d_conv, with bias)
    dt, B, C = x_proj(x)                               (dt_rank, d_state, d_state)
    y      = selective_scan(x, dt_proj.weight @ dt, A = -exp(A_log), B, C, D, z,
                            delta_bias = dt_proj.bias, softplus)
    out    = out_proj(y)
Decoding keeps the last d_conv - 1 conv inputs (batch, d_inner, d_conv - 1) and the SSM state
(batch, d_inner, d_state) in float32, advanced by causal_conv1d_update and selective_state_update.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from arkernels.models._lm import LayerState, LMConfig, MambaLMBase, check_impl, init_dt_bias, kernels


@dataclass
class Mamba1Config(LMConfig):
    dt_rank: int | str = "auto"  # "auto": ceil(d_model / 16)
    dt_scale: float = 1.0

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)


def _cast_for(x, *tensors):
    """The tensors in the dtype a matmul of x would run in (autocast's, where it is on)."""
    kind = x.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
    return [t.to(dtype) for t in tensors]


def _weight_matmul(weight, x):
    """weight (m, k) @ x (batch, k, L) -> (batch, m, L), produced in that layout by one batched matmul
    (x may be a transposed view: cuBLAS reads it in place). torch.matmul would fold the batch into one
    matrix product and return a transposed view, which the next op then copies."""
    w, x = _cast_for(x, weight, x)
    return torch.bmm(w.expand(x.shape[0], *w.shape), x)


def _matmul_weight_t(y, weight):
    """y (batch, k, L) -> y^T @ weight^T, (batch, L, m), contiguous; y^T is read transposed in place."""
    w, y = _cast_for(y, weight, y)
    wt = w.t()
    return torch.bmm(y.transpose(1, 2), wt.expand(y.shape[0], *wt.shape))


class Mamba1Mixer(nn.Module):
    def __init__(self, cfg: Mamba1Config, impl: str = "reference"):
        super().__init__()
        di, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank_value
        self.d_inner, self.d_state, self.dt_rank = di, n, r
        self.in_proj = nn.Linear(cfg.d_model, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, cfg.d_conv, groups=di, padding=cfg.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        std = r ** -0.5 * cfg.dt_scale  # keeps dt's variance at initialisation (mamba-ssm's "random")
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_dt_bias(di, cfg))
        # S4D-real: A[d, n] = -(n + 1), stored as its log, float32.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, cfg.d_model, bias=False)
        self.set_impl(impl)

    def set_impl(self, impl: str) -> None:
        self.impl = check_impl(impl)
        self._k = kernels(impl)
        if impl == "reference":
            from arkernels.reference import selective_scan_ref

            self._scan = selective_scan_ref
        else:
            import arkernels

            self._scan = arkernels.selective_scan

    def _conv_weight(self):
        return self.conv1d.weight.squeeze(1)  # (d_inner, 1, W) -> (d_inner, W), a view

    def forward(self, hidden, state: LayerState | None = None):
        """hidden (batch, L, d_model) -> (batch, L, d_model); fills `state` (prefill) when given."""
        # Every (batch, d_inner, L) tensor the scan reads is produced in that layout by a batched matmul
        # (weight @ per-batch (features, L) operand, the operand read transposed in place), so that the
        # scan's inputs and its gradients need no layout copies: on the GPU, the copies that
        # nn.Linear on (batch, L, features) views implied were ~25% of a 130M model's training step
        # (scripts/profile_mamba_lm.py, bench/NOTES.md).
        di, n, r = self.d_inner, self.d_state, self.dt_rank
        # (batch, d_model, L), a view; cast once here for both halves of in_proj (autocast's dtype).
        (hidden_t,) = _cast_for(hidden, hidden.transpose(1, 2))
        x = _weight_matmul(self.in_proj.weight[:di], hidden_t)
        z = _weight_matmul(self.in_proj.weight[di:], hidden_t)
        keep = state is not None
        x = self._k.conv(x, self._conv_weight(), self.conv1d.bias, return_final_states=keep, activation="silu")
        if keep:
            x, state.conv_state = x
        x_dbl = _weight_matmul(self.x_proj.weight, x)  # (batch, dt_rank + 2 N, L)
        dt, B, C = x_dbl.split([r, n, n], dim=1)
        delta = _weight_matmul(self.dt_proj.weight, dt)  # the bias goes into the scan (delta_bias, in float32)
        A = -torch.exp(self.A_log.float())
        y = self._scan(x, delta, A, B, C, self.D.float(), z, self.dt_proj.bias.float(), True, keep)
        if keep:
            y, last = y
            state.ssm_state = last.float()
        # (batch, L, d_inner) @ (d_inner, d_model), y read transposed in place.
        return _matmul_weight_t(y, self.out_proj.weight)

    def step(self, hidden, state: LayerState):
        """One token per row: hidden (batch, 1, d_model) -> (batch, 1, d_model); updates `state` in place."""
        x, z = self.in_proj(hidden[:, 0]).chunk(2, dim=-1)  # (batch, d_inner) each
        x = self._k.conv_update(x, state.conv_state, self._conv_weight(), self.conv1d.bias, "silu")
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log.float())
        y = self._k.state_update(state.ssm_state, x, dt, A, B, C, self.D, z, self.dt_proj.bias, True)
        return self.out_proj(y)[:, None]


class Mamba1LMHeadModel(MambaLMBase):
    """Mamba-1 language model; ``load_state_dict`` accepts mamba-ssm's MambaLMHeadModel state dicts."""

    def __init__(self, cfg: Mamba1Config, impl: str = "reference"):
        super().__init__(cfg, lambda i: Mamba1Mixer(cfg, impl), impl)
