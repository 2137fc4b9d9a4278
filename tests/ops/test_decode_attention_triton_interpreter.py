"""The Triton kernels of decode_attention on the CPU, through the Triton interpreter (CI has no GPU).

Run separately, with the variable set before triton is imported (scripts/run_tests.sh):
    TRITON_INTERPRET=1 python -m pytest tests/ops/test_decode_attention_triton_interpreter.py
Tiny sizes (key tiles of 16 here): one and several key splits (the combine kernel), rows of different lengths,
GQA groups wider than a query tile, masks over the newest keys (causal, tree, dense with an empty row), head
dims 16, 24 (not a power of two), 64, fp32 and bf16, strided caches. Same contract and oracle as
test_decode_attention.py (whose `check` runs here); outputs NaN-poisoned.
"""
from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "0") != "1":
    pytest.skip("Triton interpreter tests: run with TRITON_INTERPRET=1 (set before triton is imported)",
                allow_module_level=True)
if torch.cuda.is_available():
    pytest.skip("a GPU is present: the triton backend is tested on it (test_decode_attention.py)",
                allow_module_level=True)
pytest.importorskip("triton")

from test_decode_attention import check  # noqa: E402

FP32, BF16 = torch.float32, torch.bfloat16

CASES = {
    "one_query": dict(B=3, Hq=2, Hkv=2, Lq=1, S_max=50, D=16, dtype=FP32),
    "gqa_rows_over_a_tile_bf16": dict(B=2, Hq=16, Hkv=2, Lq=9, S_max=40, D=16, dtype=BF16, mask="causal"),
    "tree_d24": dict(B=2, Hq=4, Hkv=1, Lq=7, S_max=33, D=24, dtype=FP32, mask="tree"),
    "dense_empty_row_strided": dict(B=2, Hq=2, Hkv=1, Lq=6, S_max=30, D=16, dtype=FP32, mask="dense", strided=True),
    "d64_bf16": dict(B=2, Hq=2, Hkv=1, Lq=2, S_max=35, D=64, dtype=BF16),
    "exact_lengths": dict(B=2, Hq=2, Hkv=2, Lq=3, S_max=32, D=16, dtype=FP32, seqlens=[3, 32]),
}


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_triton_interpreted_matches_oracle(name, splits, rng):
    check("triton", rng=rng, num_splits=splits, **CASES[name])


def test_auto_takes_triton_under_the_interpreter(rng):
    check("auto", rng=rng, B=1, Hq=2, Hkv=1, Lq=2, S_max=20, D=16, dtype=FP32)
