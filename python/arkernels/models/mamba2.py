"""Mamba-2 block and language model, with mamba-ssm 2.x's parameter names and shapes
(``backbone.layers.{i}.mixer.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj}``).

Mixer, per token of hidden (batch, L, d_model), d_inner = expand * d_model = nheads * headdim:
    z, xBC, dt = in_proj(hidden)                        (d_inner, d_inner + 2 * ngroups * d_state, nheads)
    xBC        = silu(causal depthwise conv1d(xBC))      (width d_conv, with bias)
    x, B, C    = xBC                                     (heads of headdim; groups of d_state)
    y          = ssd_chunk_scan(x, dt, A = -exp(A_log), B, C, D, dt_bias, softplus)   (A, D, dt_bias per head)
    y          = rmsnorm_per_group(y * silu(z)) * norm.weight   (groups of d_inner / ngroups)
    out        = out_proj(y)
Decoding keeps the last d_conv - 1 conv inputs (batch, conv_dim, d_conv - 1) and the SSM state
(batch, nheads, headdim, d_state) in float32, advanced by causal_conv1d_update and selective_state_update.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from arkernels.models._lm import LayerState, LMConfig, MambaLMBase, check_impl, init_dt_bias, kernels


@dataclass
class Mamba2Config(LMConfig):
    d_state: int = 128
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    A_init_range: tuple = (1.0, 16.0)

    def __post_init__(self):
        if self.d_inner % self.headdim:
            raise ValueError(f"headdim: expected a divisor of d_inner = {self.d_inner}, got {self.headdim}")
        if (self.d_inner // self.headdim) % self.ngroups:
            raise ValueError(f"ngroups: expected a divisor of nheads = {self.d_inner // self.headdim}, "
                             f"got {self.ngroups}")

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim


class GatedRMSNorm(nn.Module):
    """mamba-ssm's RMSNormGated with norm_before_gate=False: RMS-normalise y * silu(z) over groups of
    group_size channels, then scale by weight. float32 math, result in y's dtype."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y, z):
        g = y.float() * F.silu(z.float())
        shape = g.shape
        g = g.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (g.reshape(shape) * self.weight.float()).to(y.dtype)


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: Mamba2Config, impl: str = "reference"):
        super().__init__()
        di, n, G, H = cfg.d_inner, cfg.d_state, cfg.ngroups, cfg.nheads
        self.d_inner, self.d_state, self.ngroups, self.nheads, self.headdim = di, n, G, H, cfg.headdim
        self.chunk_size = cfg.chunk_size
        self.conv_dim = di + 2 * G * n
        self.in_proj = nn.Linear(cfg.d_model, 2 * di + 2 * G * n + H, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim,
                                padding=cfg.d_conv - 1, bias=True)
        self.dt_bias = nn.Parameter(init_dt_bias(H, cfg))
        lo, hi = cfg.A_init_range
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(lo, hi)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedRMSNorm(di, di // G, cfg.norm_epsilon)
        self.out_proj = nn.Linear(di, cfg.d_model, bias=False)
        self.set_impl(impl)

    def set_impl(self, impl: str) -> None:
        self.impl = check_impl(impl)
        self._k = kernels(impl)
        if impl == "reference":
            from arkernels.reference import ssd_chunk_scan_chunked_ref

            self._ssd = ssd_chunk_scan_chunked_ref
        else:
            import arkernels

            self._ssd = arkernels.ssd_chunk_scan

    def _conv_weight(self):
        return self.conv1d.weight.squeeze(1)  # (conv_dim, 1, W) -> (conv_dim, W), a view

    def _split_in(self, zxbcdt):
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _split_xbc(self, xbc):
        gn = self.ngroups * self.d_state
        x, B, C = xbc.split([self.d_inner, gn, gn], dim=-1)
        lead = x.shape[:-1]
        return (x.reshape(*lead, self.nheads, self.headdim), B.reshape(*lead, self.ngroups, self.d_state),
                C.reshape(*lead, self.ngroups, self.d_state))

    def forward(self, hidden, state: LayerState | None = None):
        """hidden (batch, L, d_model) -> (batch, L, d_model); fills `state` (prefill) when given."""
        b, L, _ = hidden.shape
        z, xbc, dt = self._split_in(self.in_proj(hidden))
        keep = state is not None
        xbc = self._k.conv(xbc.transpose(1, 2), self._conv_weight(), self.conv1d.bias, return_final_states=keep,
                           activation="silu")
        if keep:
            xbc, state.conv_state = xbc
        x, B, C = self._split_xbc(xbc.transpose(1, 2))
        A = -torch.exp(self.A_log.float())
        y, final = self._ssd(x, dt, A, B, C, chunk_size=self.chunk_size, D=self.D, dt_bias=self.dt_bias,
                             dt_softplus=True, return_final_states=True)
        if keep:
            state.ssm_state = final.float()
        y = self.norm(y.reshape(b, L, self.d_inner), z)
        return self.out_proj(y)

    def step(self, hidden, state: LayerState):
        """One token per row: hidden (batch, 1, d_model) -> (batch, 1, d_model); updates `state` in place."""
        z, xbc, dt = self._split_in(self.in_proj(hidden[:, 0]))
        xbc = self._k.conv_update(xbc, state.conv_state, self._conv_weight(), self.conv1d.bias, "silu")
        x, B, C = self._split_xbc(xbc)  # (batch, H, P), (batch, G, N) x2
        H, P, N = self.nheads, self.headdim, self.d_state
        # Per-head parameters broadcast over headdim (and d_state) with stride 0, as the decode op allows.
        A = (-torch.exp(self.A_log.float()))[:, None, None].expand(H, P, N)
        y = self._k.state_update(state.ssm_state, x, dt[:, :, None].expand(-1, H, P), A, B, C,
                                 self.D[:, None].expand(H, P), None, self.dt_bias[:, None].expand(H, P), True)
        y = self.norm(y.reshape(-1, self.d_inner), z)
        return self.out_proj(y)[:, None]


class Mamba2LMHeadModel(MambaLMBase):
    """Mamba-2 language model; ``load_state_dict`` accepts mamba-ssm's MambaLMHeadModel state dicts
    (ssm_cfg layer "Mamba2", rmsnorm, no MLP)."""

    def __init__(self, cfg: Mamba2Config, impl: str = "reference"):
        super().__init__(cfg, lambda i: Mamba2Mixer(cfg, impl), impl)
