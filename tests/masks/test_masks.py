"""arkernels.masks: every builder against a dense mask written here from the spec's definitions
(/work/shared/specs/attention_masks.md), at several tilings; layout invariants; errors; 1M-token layouts."""
from __future__ import annotations

import bisect

import pytest
import torch

from arkernels import masks
from arkernels.masks import BITS, FULL, RULE

TILINGS = [(16, 16), (32, 64), (64, 32), (128, 128), (128, 64)]
VAR_ENDS = [0, 1, 5, 14, 30, 55, 91, 155, 255, 424, 680]


# ---------------- brute-force references, straight from the definitions ----------------

def ref_causal(L, S):
    return torch.tensor([[k <= q + S - L for k in range(S)] for q in range(L)], dtype=torch.bool)


def ref_window(w, L, S):
    return torch.tensor([[0 <= q + S - L - k < w for k in range(S)] for q in range(L)], dtype=torch.bool)


def ref_block_causal(ends):
    block = [bisect.bisect_right(ends, t) - 1 for t in range(ends[-1])]
    return torch.tensor([[block[k] <= block[q] for k in range(ends[-1])] for q in range(ends[-1])], dtype=torch.bool)


def ref_scam(N, B):
    """Spec §2: allowed = (qb < N and kb < N and qb >= kb) or (qb >= N and kb < N and qb - N > kb) or qb == kb."""
    T = 2 * N * B

    def ok(q, k):
        qb, kb = q // B, k // B
        return (qb < N and kb < N and qb >= kb) or (qb >= N and kb < N and qb - N > kb) or qb == kb

    return torch.tensor([[ok(q, k) for k in range(T)] for q in range(T)], dtype=torch.bool)


def ref_document(cu):
    doc = [bisect.bisect_right(cu, t) - 1 for t in range(cu[-1])]
    return torch.tensor([[doc[q] == doc[k] for k in range(cu[-1])] for q in range(cu[-1])], dtype=torch.bool)


def ref_tree(parents, prefix):
    """Spec §6: M = identity; M[i] |= M[parent[i]]; query i sees the prefix and keys j with M[i, j]."""
    N = len(parents)
    M = [[i == j for j in range(N)] for i in range(N)]
    for i in range(1, N):
        M[i] = [a or b for a, b in zip(M[i], M[parents[i]])]
    return torch.tensor([[True] * prefix + M[i] for i in range(N)], dtype=torch.bool)


# ---------------- the check every mask goes through ----------------

def tile_reduce(dense, bq, bk):
    """Per tile: all in-bounds pairs visible, any visible."""
    L, S = dense.shape
    nq, nk = -(-L // bq), -(-S // bk)
    pad_all = torch.ones(nq * bq, nk * bk, dtype=torch.bool)
    pad_any = torch.zeros(nq * bq, nk * bk, dtype=torch.bool)
    pad_all[:L, :S] = dense
    pad_any[:L, :S] = dense
    t = lambda x: x.view(nq, bq, nk, bk).permute(0, 2, 1, 3).flatten(2)  # noqa: E731
    return t(pad_all).all(-1), t(pad_any).any(-1)


def layout_kinds(lay):
    """(nq, nk) kind grid from the forward runs (-1 = empty)."""
    grid = torch.full((lay.num_q_tiles, lay.num_k_tiles), -1, dtype=torch.int64)
    ptr, runs = lay.q_run_ptr.tolist(), lay.q_runs.tolist()
    for i in range(lay.num_q_tiles):
        for s, e, kind, _ in runs[ptr[i]:ptr[i + 1]]:
            grid[i, s:e] = kind
    return grid


def assert_runs_merged(ptr, runs):
    """Neighbouring runs of a row never continue each other (same kind, adjacent, BITS indices continuing):
    not a layout invariant, but fewer runs is less work for the kernel."""
    p, r = ptr.tolist(), runs.tolist()
    for i in range(len(p) - 1):
        for a, b in zip(r[p[i]:p[i + 1]], r[p[i] + 1:p[i + 1]]):
            assert not (a[1] == b[0] and a[2] == b[2] and (a[2] != BITS or b[3] == a[3] + a[1] - a[0])), (i, a, b)


def check_mask(mask, ref, tilings=TILINGS, exact_partial=False):
    assert (mask.L, mask.S) == tuple(ref.shape)
    assert torch.equal(mask.to_dense(), ref), "to_dense differs from the reference"
    for bq, bk in tilings:
        lay = mask.layout(bq, bk)
        lay.validate(exhaustive=True)
        assert torch.equal(lay.to_dense(), ref), f"layout {bq}x{bk} decodes to a different mask"
        assert_runs_merged(lay.q_run_ptr, lay.q_runs)
        assert_runs_merged(lay.k_run_ptr, lay.k_runs)
        all_, any_ = tile_reduce(ref, bq, bk)
        kinds = layout_kinds(lay)
        assert bool(all_[kinds == FULL].all()), f"{bq}x{bk}: a FULL tile is not full"
        assert not bool(any_[kinds == -1].any()), f"{bq}x{bk}: an empty tile has visible pairs"
        if exact_partial:
            partial = (kinds == RULE) | (kinds == BITS)
            assert not bool((all_ | ~any_)[partial].any()), f"{bq}x{bk}: a partial tile is all-true or all-false"
        assert mask.layout(bq, bk) is lay  # cached
    assert mask.num_visible() == int(ref.sum()) and mask.density() == int(ref.sum()) / ref.numel()


# ---------------- builders ----------------

@pytest.mark.parametrize("L", [1, 7, 37, 130, 300])
def test_causal(L):
    check_mask(masks.causal(L), ref_causal(L, L), exact_partial=True)


@pytest.mark.parametrize("L,S", [(1, 37), (7, 300), (37, 130), (130, 37)])
def test_causal_end_aligned(L, S):
    check_mask(masks.causal(L, S), ref_causal(L, S), exact_partial=True)


@pytest.mark.parametrize("L,S", [(1, 1), (7, 300), (256, 680), (130, 37)])
def test_full(L, S):
    check_mask(masks.full(L, S), torch.ones(L, S, dtype=torch.bool), exact_partial=True)
    lay = masks.full(L, S).layout(64, 32)
    assert lay.tile_counts()["partial"] == 0 and lay.tile_counts()["empty"] == 0


@pytest.mark.parametrize("w", [1, 5, 64])
@pytest.mark.parametrize("L,S", [(37, 37), (300, 300), (7, 130), (130, 300)])
def test_sliding_window(w, L, S):
    check_mask(masks.sliding_window(w, L, S), ref_window(w, L, S), exact_partial=True)


@pytest.mark.parametrize("ends", [VAR_ENDS, [0, 1], [0, 7], [0, 3, 4, 37], [0, 100, 101, 130, 299, 300], [0, 64, 200, 256]])
def test_block_causal(ends):
    check_mask(masks.block_causal(ends), ref_block_causal(ends), exact_partial=True)


def test_block_causal_accepts_tensor_and_equal_blocks():
    ends = masks.equal_blocks(130, 16).tolist()
    assert ends == list(range(0, 130, 16)) + [130]
    check_mask(masks.block_causal(torch.tensor(ends, dtype=torch.int32)), ref_block_causal(ends), tilings=[(32, 64)])


@pytest.mark.parametrize("block", [16, 64, 128])
def test_var_tile_counts(block):
    """Spec §3 counts tiles crossing L = 680 as partial; we classify them by their in-bounds pairs (crossing
    tiles that are fully visible are FULL), so the spec's partial count = our partial + crossing FULL tiles."""
    spec = {128: (12, 16, 8), 64: (54, 31, 36), 16: (1059, 127, 663)}[block]
    ours = {128: (19, 9, 8), 64: (68, 17, 36), 16: (1117, 69, 663)}[block]
    lay = masks.block_causal(VAR_ENDS).layout(block, block)
    lay.validate()
    kinds = layout_kinds(lay)
    n = lay.num_q_tiles
    crossing = torch.zeros(n, n, dtype=torch.bool)
    if 680 % block:
        crossing[-1, :] = crossing[:, -1] = True
    full_inner = int(((kinds == FULL) & ~crossing).sum())
    full_crossing = int(((kinds == FULL) & crossing).sum())
    counts = lay.tile_counts()
    assert (full_inner, counts["partial"] + full_crossing, counts["empty"]) == spec
    assert (counts["full"], counts["partial"], counts["empty"]) == ours


@pytest.mark.parametrize("N,B", [(1, 3), (4, 3), (5, 7), (2, 64), (3, 128)])
def test_skip_causal(N, B):
    tilings = TILINGS if 2 * N * B <= 300 else [(64, 32), (128, 128), (128, 64)]
    check_mask(masks.skip_causal(N, B), ref_scam(N, B), tilings=tilings, exact_partial=True)


def test_skip_causal_aligned_blocks_have_no_partial_tiles():
    """Spec §2: block_size a multiple of the tile => every tile full or empty."""
    lay = masks.skip_causal(3, 128).layout(128, 128)
    assert lay.tile_counts()["partial"] == 0 and lay.rule is None


@pytest.mark.parametrize("cu", [[0, 1], [0, 1, 2, 3, 40, 41, 130], [0, 37], [0, 5, 5, 100, 300], [0, 299, 300]])
def test_document(cu):
    check_mask(masks.document(cu), ref_document(cu), exact_partial=True)


@pytest.mark.parametrize("inner", ["causal", "window", "block_causal", "skip_causal"])
def test_document_with_mask(inner):
    cu = [0, 1, 2, 30, 31, 97, 98, 150]
    L = cu[-1]
    m, ref = {
        "causal": (masks.causal(L), ref_causal(L, L)),
        "window": (masks.sliding_window(5, L), ref_window(5, L, L)),
        "block_causal": (masks.block_causal([0, 10, 64, 65, 150]), ref_block_causal([0, 10, 64, 65, 150])),
        "skip_causal": (masks.skip_causal(5, 15), ref_scam(5, 15)),
    }[inner]
    dm = masks.document(cu, m)
    assert dm.layout(32, 32).tile_bits is None  # a level rule, no bitmaps
    check_mask(dm, ref_document(cu) & ref, exact_partial=inner != "skip_causal")  # levels.py: doc x SCAM may keep
    # a few all-false RULE tiles (correct, a per-token test in the kernel)
    assert torch.equal(masks.and_(m, masks.document(cu)).to_dense(), ref_document(cu) & ref)


def random_parents(n, gen):
    return [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]


@pytest.mark.parametrize("prefix", [0, 37])
@pytest.mark.parametrize("shape", ["root", "chain", "star", "random"])
def test_tree(shape, prefix):
    gen = torch.Generator().manual_seed(len(shape) * 100 + prefix)
    parents = {"root": [-1], "chain": [-1] + list(range(0, 39)), "star": [-1] + [0] * 63,
               "random": random_parents(150, gen)}[shape]
    check_mask(masks.tree(parents, prefix=prefix), ref_tree(parents, prefix))


def test_tree_accepts_tensor():
    parents = torch.tensor([-1, 0, 0, 1, 2, 2])
    check_mask(masks.tree(parents, prefix=3), ref_tree(parents.tolist(), 3), tilings=[(16, 16)])


@pytest.mark.parametrize("L,S,p", [(1, 1, 0.5), (7, 300, 0.5), (130, 37, 0.9), (300, 130, 0.1)])
def test_from_dense(L, S, p):
    gen = torch.Generator().manual_seed(L * 1000 + S)
    dense = torch.rand(L, S, generator=gen) < p
    dense[: L // 2, : S // 3] = True  # some full tiles
    dense[L // 2:, S // 3:] = False  # some empty tiles
    check_mask(masks.from_dense(dense), dense, exact_partial=True)


# ---------------- combinations ----------------

def test_and_or():
    L = 130
    gen = torch.Generator().manual_seed(1)
    dense = torch.rand(L, L, generator=gen) < 0.7
    for a, ra in ((masks.causal(L), ref_causal(L, L)), (masks.sliding_window(5, L), ref_window(5, L, L))):
        for b, rb in ((masks.from_dense(dense), dense), (masks.block_causal([0, 50, 130]), ref_block_causal([0, 50, 130]))):
            check_mask(masks.and_(a, b), ra & rb, tilings=[(16, 16), (32, 64), (128, 64)], exact_partial=True)
            check_mask(masks.or_(a, b), ra | rb, tilings=[(16, 16), (32, 64), (128, 64)], exact_partial=True)


def test_and_of_document_is_a_level_rule():
    cu = [0, 40, 41, 130]
    m = masks.and_(masks.document(cu), masks.sliding_window(9, 130))
    assert m.layout(32, 32).tile_bits is None and m.rule.q_doc is not None
    check_mask(m, ref_document(cu) & ref_window(9, 130, 130), tilings=[(32, 32)])
    m2 = masks.and_(masks.document([0, 70, 130]), masks.document(cu))  # documents of documents
    check_mask(m2, ref_document([0, 70, 130]) & ref_document(cu), tilings=[(16, 16)])


# ---------------- FlexAttention ----------------

flex = pytest.importorskip("torch.nn.attention.flex_attention")


@pytest.mark.parametrize("make", ["var", "scam", "doc_causal", "tree", "dense"])
def test_flex_round_trip(make):
    gen = torch.Generator().manual_seed(3)
    m = {"var": lambda: masks.block_causal(VAR_ENDS[:8]), "scam": lambda: masks.skip_causal(4, 11),
         "doc_causal": lambda: masks.document([0, 3, 60, 61, 77], masks.causal(77)),
         "tree": lambda: masks.tree(random_parents(40, gen), prefix=37),
         "dense": lambda: masks.from_dense(torch.rand(37, 130, generator=gen) < 0.5)}[make]()
    ref = m.to_dense()
    bm = masks.to_flex_block_mask(m, block_size=32)
    assert bm.seq_lengths == (m.L, m.S)
    # flex's own dense view of the block mask (mask_mod applied in partial blocks, nothing in empty ones)
    assert torch.equal(bm.to_dense()[0, 0].bool()[: -(-m.L // 32), : -(-m.S // 32)], tile_reduce(ref, 32, 32)[1])
    back = masks.from_flex_block_mask(bm)
    check_mask(back, ref, tilings=[(32, 32), (16, 16), (64, 32)], exact_partial=True)


def test_from_flex_create_block_mask():
    """A BlockMask built by FlexAttention itself (on the CPU), with a mask_mod that is no level rule."""
    bm = flex.create_block_mask(lambda b, h, q, k: ((q - k) % 3 == 0) & (k <= q), None, None, 130, 77, device="cpu",
                                BLOCK_SIZE=32)
    ref = torch.tensor([[(q - k) % 3 == 0 and k <= q for k in range(77)] for q in range(130)])
    check_mask(masks.from_flex_block_mask(bm), ref, tilings=[(32, 32), (16, 64)])


def test_flex_batch_head_selection():
    bm = flex.create_block_mask(lambda b, h, q, k: (k <= q) | (h == 1), 1, 2, 64, 64, device="cpu", BLOCK_SIZE=16)
    assert torch.equal(masks.from_flex_block_mask(bm, head=0).to_dense(), ref_causal(64, 64))
    assert bool(masks.from_flex_block_mask(bm, head=1).to_dense().all())
    with pytest.raises(ValueError, match="head"):
        masks.from_flex_block_mask(bm, head=2)


# ---------------- bad arguments ----------------

@pytest.mark.parametrize("call,exc,match", [
    (lambda: masks.block_causal([0, 5, 3, 9]), ValueError, "boundaries must be strictly increasing"),
    (lambda: masks.block_causal([0, 5, 5, 9]), ValueError, "boundaries must be strictly increasing"),
    (lambda: masks.block_causal([1, 5]), ValueError, "boundaries must start at 0"),
    (lambda: masks.block_causal([0.0, 5.0]), TypeError, "boundaries must hold Python ints"),
    (lambda: masks.block_causal(torch.tensor([[0, 5]])), ValueError, "boundaries must be 1-D"),
    (lambda: masks.document([0, 5, 3]), ValueError, "cu_seqlens must be nondecreasing"),
    (lambda: masks.document("0,5"), TypeError, "cu_seqlens must be a list"),
    (lambda: masks.document([0, 5], masks.causal(6)), ValueError, "mask must be 5 x 5"),
    (lambda: masks.tree([-1, 0, 2]), ValueError, r"parents\[2\] = 2"),
    (lambda: masks.tree([0, 0]), ValueError, r"parents\[0\] must be -1"),
    (lambda: masks.tree([-1, 0], prefix=-1), ValueError, "prefix must be >= 0"),
    (lambda: masks.and_(masks.causal(5), masks.causal(6)), ValueError, "a and b must have the same L and S"),
    (lambda: masks.or_(masks.causal(5, 7), masks.causal(5)), ValueError, "a and b must have the same L and S"),
    (lambda: masks.and_(masks.causal(5), torch.ones(5, 5)), TypeError, "b must be an arkernels.masks.Mask"),
    (lambda: masks.from_dense(torch.ones(5, 5)), TypeError, "bool_mask must have dtype torch.bool"),
    (lambda: masks.from_dense(torch.ones(5, dtype=torch.bool)), ValueError, "bool_mask must be 2-D"),
    (lambda: masks.from_dense([[True]]), TypeError, "bool_mask must be a torch.Tensor"),
    (lambda: masks.sliding_window(0, 5), ValueError, "w must be >= 1, got 0"),
    (lambda: masks.sliding_window(2.5, 5), TypeError, "w must be an int"),
    (lambda: masks.skip_causal(2, 0), ValueError, "block_size must be >= 1, got 0"),
    (lambda: masks.skip_causal(0, 4), ValueError, "num_blocks must be >= 1, got 0"),
    (lambda: masks.equal_blocks(10, -2), ValueError, "block must be >= 1"),
    (lambda: masks.causal(0), ValueError, "L must be >= 1"),
    (lambda: masks.causal(5).layout(0, 16), ValueError, "block_q must be >= 1"),
    (lambda: masks.to_flex_block_mask(masks.causal(5), block_size=(16, 16, 16)), ValueError, "block_size"),
    (lambda: masks.from_flex_block_mask(masks.causal(5)), TypeError, "block_mask must be"),
])
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_validate_catches_broken_layouts():
    lay = masks.causal(300).layout(32, 32)
    broken = lay.q_runs.clone()
    broken[0, 1] = 5  # first row's run now reaches past its transposed counterpart
    with pytest.raises(ValueError, match="transpose|overlap"):
        type(lay)(**{**lay.__dict__, "q_runs": broken}).validate()
    with pytest.raises(ValueError, match="int32"):
        type(lay)(**{**lay.__dict__, "q_runs": lay.q_runs.long()}).validate()
    with pytest.raises(ValueError, match="RULE runs need a rule"):
        type(lay)(**{**lay.__dict__, "rule": None}).validate()


# ---------------- 1M tokens: tile counts in closed form ----------------

def test_million_token_layouts_counts():
    """VAR (pn = 1..146), SCAM (256 x 2048) and 1000 documents at 1M tokens, 128 x 128 (O(runs) checks only)."""
    # SCAM, block 2048 = 16 tiles: per clean block row j (16 tile rows) (j + 1) * 16 full tiles, noisy j: j * 16 + 16.
    lay = masks.skip_causal(256, 2048).layout(128, 128)
    lay.validate()
    N, t = 256, 16
    full = sum((j + 1) * t * t for j in range(N)) + sum((j * t + t) * t for j in range(N))
    assert lay.tile_counts() == {"full": full, "partial": 0, "empty": (2 * N * t) ** 2 - full}

    # VAR: tile (i, j) full iff level(last key of j) <= level(first query of i) (in-bounds tokens only).
    ends = torch.cumsum(torch.arange(1, 147) ** 2, 0)
    L = int(ends[-1])
    lay = masks.block_causal(torch.cat([torch.zeros(1, dtype=torch.int64), ends])).layout(128, 128)
    lay.validate()
    n = -(-L // 128)
    first_level = torch.searchsorted(ends, torch.arange(n) * 128, right=True)
    last_level = torch.searchsorted(ends, torch.clamp(torch.arange(1, n + 1) * 128, max=L) - 1, right=True)
    full = int(torch.searchsorted(last_level, first_level, right=True).sum())  # last_level is sorted
    nonempty = int(torch.searchsorted(first_level, last_level, right=True).sum())
    assert lay.tile_counts() == {"full": full, "partial": nonempty - full, "empty": n * n - nonempty}

    # Documents with causal inside: a tile is full iff both tiles lie in one document and k tile <= q tile
    # strictly below the diagonal; partial tiles are the diagonal ones and those crossing a document edge.
    gen = torch.Generator().manual_seed(0)
    L = 1 << 20
    cu = torch.cat([torch.tensor([0]), torch.sort(torch.randperm(L - 1, generator=gen)[:999] + 1).values, torch.tensor([L])])
    lay = masks.document(cu, masks.causal(L)).layout(128, 128)
    lay.validate()
    n = L // 128
    doc_first = torch.searchsorted(cu, torch.arange(n) * 128, right=True)
    doc_last = torch.searchsorted(cu, torch.arange(1, n + 1) * 128 - 1, right=True)
    single = doc_first == doc_last
    # full tiles of row i: key tiles j < i holding only document doc_first[i], when row i holds only it too
    j_lo = torch.searchsorted(doc_first, doc_first)  # first tile whose first token is in that document
    full = int(torch.where(single, torch.arange(n) - j_lo, 0).clamp(min=0).sum())
    assert lay.tile_counts()["full"] == full
    # nonempty: key tiles j <= i sharing a document with row i
    j_first = torch.searchsorted(doc_last, doc_first)
    assert lay.tile_counts()["full"] + lay.tile_counts()["partial"] == int((torch.arange(n) - j_first + 1).sum())


@pytest.mark.filterwarnings("ignore")
def test_flex_attention_uses_the_mask():
    """flex_attention (eager, CPU) with our BlockMask equals SDPA with the dense mask."""
    m = masks.document([0, 30, 31, 100, 130], masks.skip_causal(5, 13))
    q, k, v = (torch.randn(1, 2, 130, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    out = flex.flex_attention(q, k, v, block_mask=masks.to_flex_block_mask(m, 32))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m.to_dense())
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


def _tensors_of(obj, seen=None):
    """Every tensor a mask holds, nested masks and rules included."""
    from dataclasses import fields, is_dataclass

    out = []
    items = ([getattr(obj, f.name) for f in fields(obj)] if is_dataclass(obj) else
             [v for n, v in vars(obj).items() if n != "_layouts"])
    for v in items:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, masks.Mask) or is_dataclass(v):
            out += _tensors_of(v)
    return out


@pytest.mark.parametrize("make", [
    lambda: masks.causal(37), lambda: masks.skip_causal(3, 5),
    lambda: masks.document([0, 10, 30], masks.sliding_window(4, 30)),
    lambda: masks.tree([-1, 0, 0, 1], prefix=5),
    lambda: masks.and_(masks.causal(20), masks.from_dense(torch.rand(20, 20) < 0.5)),
], ids=["causal", "scam", "document_window", "tree", "and_dense"])
def test_on_moves_every_tensor(make):
    """mask.on(device) for a mask_mod evaluated on that device (FlexAttention on the GPU)."""
    m = make()
    moved = m.on("meta")
    held = _tensors_of(moved)
    assert held and all(t.device.type == "meta" for t in held)
    assert all(t.device.type == "cpu" for t in _tensors_of(m))  # the original is untouched
    assert torch.equal(m.on("cpu").to_dense(), m.to_dense())


@pytest.mark.gpu
def test_flex_attention_compiled_on_cuda_uses_the_mask():
    m = masks.document([0, 300, 301, 700, 1000], masks.causal(1000))
    q, k, v = (torch.randn(1, 2, 1000, 64, device="cuda") for _ in range(3))
    flex_compiled = torch.compile(flex.flex_attention)
    out = flex_compiled(q, k, v, block_mask=masks.to_flex_block_mask(m, 128, "cuda"))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m.to_dense().cuda())
    assert torch.allclose(out, ref, atol=2e-3, rtol=2e-3)


def ref_level_rule(ql, kl, window=None, qg=None, kg=None, qd=None, kd=None):
    """layout.py's definition, element by element."""
    def ok(q, k):
        level = kl[k] <= ql[q] and (window is None or ql[q] - kl[k] < window)
        group = qg is not None and qg[q] == kg[k]
        doc = qd is None or qd[q] == kd[k]
        return doc and (level or group)

    return torch.tensor([[ok(q, k) for k in range(len(kl))] for q in range(len(ql))], dtype=torch.bool)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("sorted_keys", [True, False])
def test_from_level_rule_any_levels(window, sorted_keys):
    """Arbitrary (unsorted, repeated) levels, groups and documents: the general path (several column pieces)."""
    gen = torch.Generator().manual_seed(7 + (window or 0) + sorted_keys)
    L, S = 70, 90
    vec = lambda n, hi: torch.randint(0, hi, (n,), generator=gen, dtype=torch.int32)  # noqa: E731
    ql, kl, qg, kg, qd, kd = vec(L, 12), vec(S, 12), vec(L, 4), vec(S, 4), vec(L, 2), vec(S, 2)
    if sorted_keys:
        kl, kg, kd = kl.sort().values, kg.sort().values, kd.sort().values
    rule = masks.LevelRule(ql, kl, window, qd, kd, qg, kg)
    ref = ref_level_rule(ql.tolist(), kl.tolist(), window, qg.tolist(), kg.tolist(), qd.tolist(), kd.tolist())
    check_mask(masks.from_level_rule(rule), ref, tilings=[(16, 16), (8, 32), (32, 8)])
    plain = masks.LevelRule(ql, kl, window)
    check_mask(masks.from_level_rule(plain), ref_level_rule(ql.tolist(), kl.tolist(), window), tilings=[(16, 16), (8, 32)])


def test_document_with_non_level_mask():
    parents = [-1, 0, 0, 1, 1, 2, 5, 6, 6]
    cu = [0, 4, 9]
    m = masks.document(cu, masks.tree(parents))
    check_mask(m, ref_document(cu) & ref_tree(parents, 0), tilings=[(16, 16), (4, 8)])


def test_layout_on_another_device_is_cached_separately():
    m = masks.causal(300)
    lay = m.layout(32, 32, device="cpu")
    assert m.layout(32, 32) is lay and lay.q_runs.device.type == "cpu"
