"""The roofline, measured in the same run as the op benchmarks (so ratios hold on this machine today).

CUDA: device-to-device copy of 1 GiB (``x.clone()``; bytes read + written) and a bf16 matmul 8192^3 on
random data. CPU: a copy of 256 MiB (``y.copy_(x)``) and an fp32 matmul 1024^3.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from bench.timing import time_ms


@dataclass
class Ceilings:
    copy_what: str
    copy_ms: float | None = None
    copy_gbps: float | None = None      # (bytes read + bytes written) / time
    matmul_what: str = ""
    matmul_ms: float | None = None
    matmul_tflops: float | None = None  # 2 * m * n * k / time
    errors: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable lines for the report header."""
        copy = (f"{self.copy_ms:.3f} ms = {self.copy_gbps:.0f} GB/s" if self.copy_gbps else "not measured")
        mm = (f"{self.matmul_ms:.3f} ms = {self.matmul_tflops:.3g} TFLOP/s" if self.matmul_tflops else "not measured")
        out = [f"- copy bandwidth ({self.copy_what}): {copy}", f"- matmul rate ({self.matmul_what}): {mm}"]
        out += [f"- ceiling error: {e}" for e in self.errors]
        return out


def measure(device: torch.device | str) -> Ceilings:
    device = torch.device(device)
    cuda = device.type == "cuda"
    copy_bytes = 2**30 if cuda else 2**28
    n = 8192 if cuda else 1024
    mm_dtype = torch.bfloat16 if cuda else torch.float32
    result = Ceilings(
        copy_what=f"{'device-to-device clone' if cuda else 'memcpy'} of {copy_bytes >> 20} MiB, bytes read + written",
        matmul_what=f"{'bf16' if cuda else 'fp32'} matmul {n}^3, random data",
    )
    errors = []
    try:
        x = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device)
        x.uniform_()
        if cuda:
            fn = x.clone
        else:
            y = torch.empty_like(x)
            fn = lambda: y.copy_(x)  # noqa: E731  (no allocation in the timed call)
        result.copy_ms = time_ms(fn, device)
        result.copy_gbps = 2 * copy_bytes / result.copy_ms / 1e6
    except Exception as err:  # noqa: BLE001  (a ceiling that fails is reported, not fatal)
        errors.append(f"copy: {type(err).__name__}: {err}")
    finally:
        x = y = fn = None  # noqa: F841
        _free(device)
    try:
        a = torch.randn(n, n, device=device, dtype=mm_dtype)
        b = torch.randn(n, n, device=device, dtype=mm_dtype)
        result.matmul_ms = time_ms(lambda: a @ b, device)
        result.matmul_tflops = 2 * n**3 / result.matmul_ms / 1e9
    except Exception as err:  # noqa: BLE001
        errors.append(f"matmul: {type(err).__name__}: {err}")
    finally:
        a = b = None  # noqa: F841
        _free(device)
    result.errors = tuple(errors)
    return result


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
