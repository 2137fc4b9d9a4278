"""Triton helpers shared by the kernels: matrix products and rounding that give the same results on the GPU
and under the Triton interpreter (TRITON_INTERPRET=1, how CI runs every kernel).

Triton 3.8's interpreter multiplies bf16 operands of tl.dot as their raw uint16 bits and truncates fp32 ->
bf16 casts; so there, operands are widened to fp32 (a bf16 x bf16 product is exact in fp32) and roundings
to bf16 are done to nearest even by hand.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRETED: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def dot(a, b, PREC: tl.constexpr):
    if INTERPRETED:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def dot_acc(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b, accumulating in place (one fp32 tile in registers instead of two)."""
    if INTERPRETED:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc=acc)
    else:
        return tl.dot(a, b, acc=acc, input_precision=PREC)


@triton.jit
def low(x, DT: tl.constexpr):
    """x as a dot operand in the inputs' dtype DT (the interpreter keeps fp32: see dot)."""
    if INTERPRETED:
        return x
    else:
        return x.to(DT)


@triton.jit
def rnd(v, DT: tl.constexpr):
    """v in dtype DT, rounded to nearest even (the interpreter would truncate fp32 -> bf16 otherwise)."""
    if v.dtype == DT:
        return v
    elif DT == tl.float32:
        return v.to(tl.float32)
    elif INTERPRETED and DT == tl.bfloat16:
        # Round the fp32 bits to the nearest even bf16 first; the truncating cast is then exact.
        u = v.to(tl.float32).to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.to(tl.float32, bitcast=True).to(DT)
    else:
        return v.to(tl.float32).to(DT)
