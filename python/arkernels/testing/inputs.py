"""Random inputs for tests and benchmarks: fresh per check, reproducible from a seed, never zeros.

Values are drawn in float32 on the CPU from an explicit generator (so a test's inputs do not depend
on which tests ran before it, nor on the device) and then cast and moved; `uniform_on_device` draws
directly on the target device in the target dtype, for tensors too large to stage through float32.
"""
from __future__ import annotations

import zlib

import torch


def seed_from(name: str) -> int:
    """A stable 31-bit seed from a name (e.g. a pytest node id): same test, same inputs, every run."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def generator(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def uniform(shape, low: float, high: float, *, generator: torch.Generator, dtype=torch.float32,
            device="cpu") -> torch.Tensor:
    """Values uniform in [low, high), drawn in float32 on the CPU, then cast to dtype and moved."""
    x = torch.rand(tuple(shape), generator=generator, dtype=torch.float32)
    return (x * (high - low) + low).to(dtype=dtype, device=device)


def normal(shape, *, generator: torch.Generator, dtype=torch.float32, device="cpu", std: float = 1.0) -> torch.Tensor:
    """Standard normal values (times std), drawn in float32 on the CPU, then cast to dtype and moved."""
    x = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return (x * std).to(dtype=dtype, device=device)


def uniform_on_device(shape, low: float, high: float, *, dtype, device, generator: torch.Generator | None = None):
    """Values uniform in [low, high) generated on `device` in `dtype` directly (no float32 staging copy);
    for inputs of billions of elements. `generator` must live on `device` when given."""
    x = torch.empty(tuple(shape), dtype=dtype, device=device)
    x.uniform_(low, high, generator=generator)
    return x


def normal_on_device(shape, *, dtype, device, generator: torch.Generator | None = None):
    """Standard normal values generated on `device` in `dtype` directly (see uniform_on_device)."""
    x = torch.empty(tuple(shape), dtype=dtype, device=device)
    x.normal_(generator=generator)
    return x
