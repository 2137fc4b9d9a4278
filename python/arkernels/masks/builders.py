"""Mask builders. Predicates (q = query position in [0, L), k = key position in [0, S)) are in docs/masks.md;
each builder states its own below. All but tree() are level rules: O(L + S) int32 vectors, no L x S tensor."""
from __future__ import annotations

from dataclasses import replace

import torch

from arkernels.masks.dense import DenseMask
from arkernels.masks.layout import LevelRule
from arkernels.masks.levels import LevelRuleMask
from arkernels.masks.mask import Mask, check_int, one_thread

I32, I64 = torch.int32, torch.int64
NEVER = 2**31 - 1  # a key level above every query level: visible through its group only


def int_vector(name: str, values) -> torch.Tensor:
    """A list, tuple or 1-D integer tensor as an int64 CPU tensor; TypeError/ValueError naming the argument."""
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.is_floating_point() or values.is_complex():
            raise TypeError(f"{name} must hold integers, got dtype {values.dtype}")
        if values.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
        return values.detach().to("cpu", I64)
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{name} must be a list, tuple or 1-D integer tensor, got {type(values).__name__}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{name} must hold Python ints, got {[type(v).__name__ for v in values][:5]}...")
    return torch.tensor(values, dtype=I64).reshape(-1)


def boundaries_vector(name: str, values, strict: bool) -> torch.Tensor:
    """Offsets 0 = b[0] < b[1] < ... < b[-1] = L (<= when not strict): block or document boundaries."""
    b = int_vector(name, values)
    if b.numel() < 2:
        raise ValueError(f"{name} must have at least 2 entries (0 and the total length), got {b.tolist()}")
    if int(b[0]) != 0:
        raise ValueError(f"{name} must start at 0, got {int(b[0])}")
    step = b[1:] - b[:-1]
    bad = (step <= 0) if strict else (step < 0)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        order = "strictly increasing" if strict else "nondecreasing"
        raise ValueError(f"{name} must be {order}, got {name}[{i}] = {int(b[i])} then {name}[{i + 1}] = {int(b[i + 1])}")
    if int(b[-1]) < 1 or int(b[-1]) >= 2**31:
        raise ValueError(f"{name}[-1] (the total length) must be in [1, 2^31), got {int(b[-1])}")
    return b


def segment_ids(b: torch.Tensor) -> torch.Tensor:
    """int32 id per position of the segments [b[i], b[i+1]) (empty segments allowed).

    A scatter of +1 at the inner boundaries and an in-place cumsum: one L-sized buffer, about half the cost of
    repeat_interleave on 1M positions (fresh memory is a large part of the cost of a 1M-token mask)."""
    ids = torch.zeros(int(b[-1]), dtype=I32)
    inner = b[1:-1]
    ids.index_put_((inner[inner < ids.numel()],), torch.ones(1, dtype=I32), accumulate=True)
    return ids.cumsum_(0)


def _lengths(L, S) -> tuple[int, int]:
    L = check_int("L", L)
    S = L if S is None else check_int("S", S)
    return L, S


def _positions(L: int, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query levels q + S - L (queries aligned to the end of the keys) and key levels k."""
    k = torch.arange(S, dtype=I32)
    q = k if L == S else torch.arange(S - L, S, dtype=I32)
    return q, k


@one_thread()
def causal(L: int, S: int | None = None) -> LevelRuleMask:
    """q sees k iff k <= q + S - L (S defaults to L; S > L: a chunk of L queries after S - L cached keys).
    With S < L the first L - S queries see nothing."""
    L, S = _lengths(L, S)
    q, k = _positions(L, S)
    return LevelRuleMask(LevelRule(q, k), L, S, "causal", k_sorted=True)


@one_thread()
def sliding_window(w: int, L: int, S: int | None = None) -> LevelRuleMask:
    """q sees k iff 0 <= (q + S - L) - k < w: causal plus the last w keys (w = 1: only itself)."""
    w = check_int("w", w)
    L, S = _lengths(L, S)
    q, k = _positions(L, S)
    return LevelRuleMask(LevelRule(q, k, window=w), L, S, f"sliding_window w={w}", k_sorted=True)


@one_thread()
def full(L: int, S: int | None = None) -> LevelRuleMask:
    """Every query sees every key (S defaults to L): e.g. a decode or cached step whose queries see the whole
    cache and each other (VAR's next scale, ACDiT's denoising block). Every tile is FULL."""
    L, S = _lengths(L, S)
    return LevelRuleMask(LevelRule(torch.zeros(L, dtype=I32), torch.zeros(S, dtype=I32)), L, S, "full", k_sorted=True)


def equal_blocks(L: int, block: int) -> torch.Tensor:
    """Boundaries 0, block, 2 block, ..., L of equal blocks (the last one shorter when block does not divide L)."""
    L, block = check_int("L", L), check_int("block", block)
    return torch.cat([torch.arange(0, L, block, dtype=I64), torch.tensor([L], dtype=I64)])


@one_thread()
def block_causal(boundaries) -> LevelRuleMask:
    """Blocks [b[i], b[i+1]) (b strictly increasing from 0 to L, like cu_seqlens): q sees k iff block(k) <= block(q).
    Bidirectional inside a block, causal across blocks (VAR scales, next-block prediction). For equal blocks
    pass equal_blocks(L, block)."""
    b = boundaries_vector("boundaries", boundaries, strict=True)
    level = segment_ids(b)
    L = int(b[-1])
    return LevelRuleMask(LevelRule(level, level), L, L, f"block_causal blocks={b.numel() - 1}", k_sorted=True)


@one_thread()
def skip_causal(num_blocks: int, block_size: int) -> LevelRuleMask:
    """ACDiT SCAM: clean blocks c_0..c_{N-1} then noisy n_0..n_{N-1} of block_size tokens (L = S = 2 N block_size).
    With qb, kb the block indices over all 2N blocks: q sees k iff
    (qb < N and kb < N and qb >= kb) or (qb >= N and kb < N and qb - N > kb) or qb == kb.
    Level rule: q_level(c_j) = j, q_level(n_j) = j - 1, k_level(c_i) = i, k_level(noisy) = 2^31 - 1, group = block."""
    N, B = check_int("num_blocks", num_blocks), check_int("block_size", block_size)
    if 2 * N * B >= 2**31:
        raise ValueError(f"2 * num_blocks * block_size must be < 2^31, got {2 * N * B}")
    half = N * B
    block = torch.arange(2 * N, dtype=I32)[:, None].expand(2 * N, B).reshape(-1)
    clean = block[:half]  # clean block j has level j
    q_level, k_level = torch.empty(2 * half, dtype=I32), torch.empty(2 * half, dtype=I32)
    q_level[:half] = clean
    torch.sub(clean, 1, out=q_level[half:])
    k_level[:half] = clean
    k_level[half:] = NEVER
    rule = LevelRule(q_level, k_level, q_group=block, k_group=block)
    return LevelRuleMask(rule, 2 * N * B, 2 * N * B, f"skip_causal num_blocks={N}, block_size={B}", k_sorted=True)


class DocumentMask(LevelRuleMask):
    """document(): keeps cu_seqlens and the inner mask so that and_(document(cu), m) can fold into a rule."""

    def __init__(self, rule: LevelRule, cu_seqlens: torch.Tensor, inner: LevelRuleMask | None):
        L = int(cu_seqlens[-1])
        what = "" if inner is None else f" and {inner!r}"
        # Document ids are sorted; merged ids keep the inner rule's order, so sortedness is the inner's.
        k_sorted = True if inner is None else inner._k_sorted
        super().__init__(rule, L, L, f"document docs={cu_seqlens.numel() - 1}{what}", k_sorted=k_sorted)
        self.cu_seqlens = cu_seqlens
        self.inner = inner


def _merge_docs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Ids of the pairs (a, b) in lexicographic order: equal iff both are equal, sorted when a and b are."""
    pairs = a.to(I64) * (int(b.max()) + 1) + b.to(I64)
    return torch.unique(pairs, return_inverse=True)[1].to(I32)


@one_thread()
def document(cu_seqlens, mask: Mask | None = None) -> Mask:
    """Packed documents [cu[i], cu[i+1]) (cu nondecreasing from 0 to L; empty documents allowed): q sees k iff
    both are in the same document (block-diagonal), and, when mask is given, mask also allows (q, k). mask must
    be L x L for L = cu[-1] and is evaluated at the packed positions (e.g. causal(L) gives per-document causal).
    A level-rule mask stays a level rule (plus q_doc/k_doc); any other mask goes through and_()."""
    cu = boundaries_vector("cu_seqlens", cu_seqlens, strict=False)
    L = int(cu[-1])
    doc = segment_ids(cu)
    if mask is None:
        return DocumentMask(LevelRule(doc, doc, q_doc=doc, k_doc=doc), cu, None)
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be an arkernels.masks.Mask or None, got {type(mask).__name__}")
    if (mask.L, mask.S) != (L, L):
        raise ValueError(f"mask must be {L} x {L} (cu_seqlens[-1] = {L}), got {mask.L} x {mask.S}")
    if not isinstance(mask, LevelRuleMask):
        from arkernels.masks.combine import and_

        return and_(document(cu), mask)
    rule = mask.rule
    q_doc, k_doc = doc, doc
    if rule.q_doc is not None:  # documents of documents: same pair of ids
        q_doc, k_doc = _merge_docs(rule.q_doc, doc), _merge_docs(rule.k_doc, doc)
        if rule.q_doc is rule.k_doc:
            k_doc = q_doc
    return DocumentMask(replace(rule, q_doc=q_doc, k_doc=k_doc), cu, mask)


def from_level_rule(rule: LevelRule) -> LevelRuleMask:
    """A mask given directly by a LevelRule (layout.py): int32 vectors, q_* of length L, k_* of length S.
    Any level values work; sorted key-side vectors (as every builder makes) give the cheapest layouts."""
    if not isinstance(rule, LevelRule):
        raise TypeError(f"rule must be an arkernels.masks.LevelRule, got {type(rule).__name__}")
    for name in ("q_level", "k_level"):
        t = getattr(rule, name)
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ValueError(f"rule.{name} must be a 1-D tensor, got {type(t).__name__}")
    return LevelRuleMask(rule, rule.q_level.numel(), rule.k_level.numel(), "level rule")


def ancestors(parent: torch.Tensor) -> torch.Tensor:
    """(N, N) bool, [i, j] = j is i or an ancestor of i, by pointer doubling (log2 N gathers, no loop over nodes)."""
    N = parent.numel()
    anc = torch.eye(N, dtype=torch.bool)
    jump = parent.clamp(min=0)  # the root points to itself
    for _ in range(max(1, N.bit_length())):
        anc = anc | anc.index_select(0, jump)  # anc[i] held distances < 2^t; now < 2^(t+1)
        jump = jump.index_select(0, jump)
    return anc


@one_thread()
def tree(parents, prefix: int = 0) -> DenseMask:
    """Speculative-decoding tree: nodes 0..N-1 in BFS order, parents[0] = -1, 0 <= parents[i] < i.
    L = N queries, S = prefix + N keys (prefix cached keys, then the nodes): query i sees every cached key and
    node j iff j is i or an ancestor of i."""
    parent = int_vector("parents", parents)
    N = parent.numel()
    if N < 1:
        raise ValueError("parents must have at least one node (the root)")
    if int(parent[0]) != -1:
        raise ValueError(f"parents[0] must be -1 (node 0 is the root), got {int(parent[0])}")
    bad = (parent[1:] < 0) | (parent[1:] >= torch.arange(1, N))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0]) + 1
        raise ValueError(f"parents[i] must satisfy 0 <= parents[i] < i (BFS order), got parents[{i}] = {int(parent[i])}")
    prefix = check_int("prefix", prefix, minimum=0)
    return DenseMask(ancestors(parent), full_prefix=prefix, describe=f"tree nodes={N}, prefix={prefix}")
