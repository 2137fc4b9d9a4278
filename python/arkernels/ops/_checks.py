"""Argument checks shared by every public op: each error names the argument, what was expected and
what was given (TypeError for types and dtypes, ValueError for shapes, devices and values)."""
from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(name: str, x, *, dtypes=FLOAT_DTYPES, min_dim: int = 0) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if dtypes is not None and x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype {allowed}, got {str(x.dtype).replace('torch.', '')}")
    if x.dim() < min_dim:
        raise ValueError(f"{name}: expected at least {min_dim} dimension(s), got a {x.dim()}-d tensor of shape {tuple(x.shape)}")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b}: expected the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}")


def check_same_dtype(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{name_b}: expected the dtype of {name_a} ({a.dtype}), got {b.dtype}")


def check_same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b}: expected a tensor on {a.device} like {name_a}, got one on {b.device}")


def check_shape(name: str, x: torch.Tensor, shape) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")


def check_attention_qkv(q, k, v, *, k_name: str = "k", v_name: str = "v", s_name: str = "S",
                        max_head_dim: int = 256) -> tuple[int, int, int, int, int, int]:
    """q (B, Hq, L, D) and k, v (B, Hkv, S, D) of one dtype and device, Hq a multiple of Hkv, D in
    1..max_head_dim. Returns (B, Hq, L, D, Hkv, S)."""
    check_tensor("q", q)
    if q.dim() != 4:
        raise ValueError(f"q: expected 4 dimensions (B, Hq, L, D), got shape {tuple(q.shape)}")
    B, Hq, L, D = q.shape
    check_tensor(k_name, k)
    if k.dim() != 4 or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"{k_name}: expected shape (B, Hkv, {s_name}, D) = ({B}, Hkv, {s_name}, {D}), got "
                         f"{tuple(k.shape)}")
    Hkv, S = k.shape[1], k.shape[2]
    if Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"{k_name}: expected a number of kv heads Hkv that divides Hq = {Hq}, got Hkv = {Hkv}")
    check_tensor(v_name, v)
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"{v_name}: expected the shape of {k_name} {tuple(k.shape)}, got {tuple(v.shape)}")
    for name, t in ((k_name, k), (v_name, v)):
        check_same_dtype("q", q, name, t)
        check_same_device("q", q, name, t)
    if not 1 <= D <= max_head_dim:
        raise ValueError(f"q: expected a head dim D in [1, {max_head_dim}], got D = {D}")
    return B, Hq, L, D, Hkv, S


def check_scale(name: str, value) -> None:
    """None or a finite real number (not a bool)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                              or not math.isfinite(float(value))):
        raise TypeError(f"{name}: expected None or a finite number, got {value!r}")
