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


def _compute_dtype(x):
    """The dtype a matmul of x runs in: autocast's where it is on, else x's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class _Proj(torch.autograd.Function):
    """Per batch row, out = weight @ x in the layouts the neighbours want, as batched matmuls against the
    expanded weight (cuBLAS reads expanded and transposed operands in place), with a backward written out so
    that no gradient needs a layout copy or a second cast:

    - x is (batch, k, L) (`x_lk` False) or (batch, L, k) (True); out is a tuple of (batch, m_i, L) blocks for
      the weight's row blocks `splits` (`out_lm` False), or one (batch, L, m) (True). Every output and every
      gradient is produced contiguous in that layout: the scan copies strided inputs and strided dout.
    - weight is cast once for all its blocks (in_proj's x and z halves used to be cast, and their fp32
      gradients zero-padded and added, separately).
    - The weight gradient, sum over batch rows of the per-row products, is reduced straight into the weight's
      dtype and layout (a bf16 -> fp32 reduction is one kernel on CUDA): no bf16 sum followed by a cast, no
      transposed gradient that AccumulateGrad copies. Each row's product is still rounded to the compute
      dtype as a bf16 GEMM output; the sum over the rows is not rounded before it is stored in float32.
    - dx of several blocks accumulates in the matmul (beta = 1) instead of in a separate add.
    """

    @staticmethod
    def forward(ctx, weight, x, dtype, x_lk, out_lm, splits):
        w, xc = weight.to(dtype), x.to(dtype)
        ctx.save_for_backward(w, xc)
        ctx.x_lk, ctx.out_lm, ctx.splits = x_lk, out_lm, splits
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        b = x.shape[0]
        x_kl = xc.transpose(1, 2) if x_lk else xc
        if out_lm:
            wt = w.t()
            return (torch.bmm(x_kl.transpose(1, 2), wt.expand(b, *wt.shape)),)
        return tuple(torch.bmm(wi.expand(b, *wi.shape), x_kl) for wi in w.split(splits))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        w, xc = ctx.saved_tensors
        b = xc.shape[0]
        x_lk = xc if ctx.x_lk else xc.transpose(1, 2)  # (batch, L, k)
        # the output gradients as (batch, m_i, L), transposed views where the output was (batch, L, m)
        g_ml = [grads[0].transpose(1, 2)] if ctx.out_lm else list(grads)
        g_ml = [g.to(w.dtype) for g in g_ml]
        blocks = w.split(ctx.splits)
        dw = dx = None
        with torch.autocast(xc.device.type, enabled=False):
            if ctx.needs_input_grad[1]:
                for wi, g in zip(blocks, g_ml):
                    if ctx.x_lk:  # dx (batch, L, k) = g^T @ w_i
                        a, m = g.transpose(1, 2), wi.expand(b, *wi.shape)
                    else:  # dx (batch, k, L) = w_i^T @ g
                        wit = wi.t()
                        a, m = wit.expand(b, *wit.shape), g
                    dx = torch.bmm(a, m) if dx is None else dx.baddbmm_(a, m)
                dx = dx.to(ctx.x_dtype)  # in_proj's input is the float32 norm output: one cast, as before
            if ctx.needs_input_grad[0]:
                dw = torch.empty(w.shape, dtype=ctx.w_dtype, device=w.device)
                for dwi, g in zip(dw.split(ctx.splits), g_ml):
                    torch.sum(torch.bmm(g, x_lk), 0, dtype=dw.dtype, out=dwi)
        return dw, dx, None, None, None, None


def _proj(weight, x, *, x_lk=False, out_lm=False, splits=None):
    """weight (m, k) times x per batch row; see _Proj. Returns a tuple of blocks unless out_lm."""
    splits = (weight.shape[0],) if splits is None else tuple(splits)
    out = _Proj.apply(weight, x, _compute_dtype(x), x_lk, out_lm, splits)
    return out[0] if out_lm else out


class _SplitDtBC(torch.autograd.Function):
    """x_dbl (batch, dt_rank + 2 N, L) -> dt (a view), B, C (batch, N, L) each contiguous.

    The scan copies strided B and C into contiguous buffers, in its forward and again in its backward (4
    small copies per layer); here one copy makes both contiguous ((2, batch, N, L), then unbound), and the
    backward is the one concatenation that the split's backward was anyway."""

    @staticmethod
    def forward(ctx, x_dbl, r, n):
        bc = x_dbl[:, r:].unflatten(1, (2, n)).transpose(0, 1).contiguous()
        return x_dbl[:, :r], bc[0], bc[1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_dt, dB, dC):
        return torch.cat([d_dt, dB, dC], dim=1), None, None


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
        # Every (batch, d_inner, L) tensor the scan reads, and every gradient it is given, is produced in that
        # layout by a batched matmul (_Proj), so that neither needs a layout copy: on the GPU, the copies that
        # nn.Linear on (batch, L, features) views implied were ~25% of a 130M model's training step
        # (scripts/profile_mamba_lm.py, bench/NOTES.md; scripts/lm_copy_census.py lists what is left).
        di, n, r = self.d_inner, self.d_state, self.dt_rank
        # x and z as two contiguous outputs (the scan copies a strided z, forward and backward).
        x, z = _proj(self.in_proj.weight, hidden, x_lk=True, splits=(di, di))
        keep = state is not None
        x = self._k.conv(x, self._conv_weight(), self.conv1d.bias, return_final_states=keep, activation="silu")
        if keep:
            x, state.conv_state = x
        (x_dbl,) = _proj(self.x_proj.weight, x)  # (batch, dt_rank + 2 N, L)
        dt, B, C = _SplitDtBC.apply(x_dbl, r, n)
        (delta,) = _proj(self.dt_proj.weight, dt)  # the bias goes into the scan (delta_bias, in float32)
        A = -torch.exp(self.A_log.float())
        y = self._scan(x, delta, A, B, C, self.D.float(), z, self.dt_proj.bias.float(), True, keep)
        if keep:
            y, last = y
            state.ssm_state = last.float()
        # (batch, L, d_model), y read transposed in place; y's gradient comes back as (batch, d_inner, L).
        return _proj(self.out_proj.weight, y, out_lm=True)

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
