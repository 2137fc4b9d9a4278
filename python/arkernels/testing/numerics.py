"""Numerics checks of ARCHITECTURE.md: norm-relative error against a float64 reference, max-abs
error, and NaN-poisoned outputs so that an unwritten element fails."""
from __future__ import annotations

import torch

# Typical bounds on ||out - ref|| / ||ref|| by the dtype the kernel computes in or stores.
REL_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are empty; inf when out has a NaN)."""
    out64, ref64 = out.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    if out64.numel() == 0 and ref64.numel() == 0:
        return 0.0
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = torch.linalg.vector_norm(ref64).item()
    num = torch.linalg.vector_norm(out64 - ref64).item()
    return num / denom if denom > 0 else num


def max_abs_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.numel() == 0:
        return 0.0
    diff = (out.detach().to(torch.float64).cpu() - ref.detach().to(torch.float64).cpu()).abs()
    return float("inf") if torch.isnan(diff).any() else diff.max().item()


def assert_close_to_reference(out, ref, *, rel_tol: float, max_abs: float | None = None, name: str = "output"):
    """Fails with both error measures when `out` is further from `ref` than the bounds allow."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    rel = relative_error(out, ref)
    mae = max_abs_error(out, ref)
    assert rel <= rel_tol, f"{name}: relative error {rel:.3e} > {rel_tol:.1e} (max abs {mae:.3e})"
    if max_abs is not None:
        assert mae <= max_abs, f"{name}: max abs error {mae:.3e} > {max_abs:.1e} (relative {rel:.3e})"


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fills a floating tensor with NaN in place (so an element a kernel forgets to write shows)."""
    return t.fill_(float("nan"))
