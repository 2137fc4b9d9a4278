"""The registered op benchmarks, and what each one provides.

An op benchmark is a module under bench/ops/ (one per op, `bench_<op>.py`) with:

    OP: str              the op's name, as in ``arkernels.<op>`` (what ``--ops`` selects)
    PEER: str | None     the provider whose time is the baseline of the speedup column (a peer library)
    SWEEP_AXIS: str      what ``Case.x`` is, for the plots (e.g. "T")
    PEER_PACKAGE: str    (optional) the peer's distribution name, whose version the report header shows
    providers(device) -> dict[str, str | None]
        every provider the module knows -> None when it can run on `device`, else why it cannot
        (the reasons are listed in the report's notes)
    cases(device, quick) -> list[Case]
        the cases to run on `device`, most important first (a report cut short keeps the first ones)
    run(case, providers) -> list[Row]
        one Row per provider in `providers`: checked against a float64 reference, then timed. Must not
        raise for a provider's failure (error text goes in the Row).
    headline(rows, ceilings) -> list[str]      (optional)
        Markdown lines of the op's headline section: its targets and whether they are met

To register an op, add its module to OPS below.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from types import ModuleType

import torch

OPS = [
    "bench.ops.bench_linear_scan",
    "bench.ops.bench_selective_scan",
    "bench.ops.bench_causal_conv1d",
    "bench.ops.bench_selective_state_update",
    "bench.ops.bench_ssd_chunk_scan",
    "bench.ops.bench_mamba_lm",
    "bench.ops.bench_block_sparse_attention",
    "bench.ops.bench_decode_attention",
]

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
MODES = ("fwd", "fwd+bwd")


@dataclass
class Case:
    """One shape/dtype/mode of one op; every provider is timed on the same inputs."""

    op: str
    mode: str                     # "fwd", "fwd+bwd" (plots use these two), or an op's own (e.g. "fwd+bwd+acc")
    dtype: torch.dtype
    shape: tuple[int, ...]
    device: str
    bytes: int                    # minimal memory traffic of one call, for GB/s and % of copy bandwidth
    flops: float | None = None    # for TFLOP/s; None where not meaningful (scans)
    x: int | None = None          # position on the op's sweep axis (plots); None off the sweep
    tags: tuple[str, ...] = ()    # "headline", "sweep", "odd", ...
    params: dict = field(default_factory=dict)  # anything else the op module needs

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, str(self.dtype).replace("torch.", ""))

    @property
    def shape_name(self) -> str:
        return "x".join(str(s) for s in self.shape)

    def key(self) -> tuple:
        """Rows of different providers with the same key were timed on the same case."""
        return (self.op, self.mode, self.dtype_name, self.shape_name)


@dataclass
class Row:
    """One provider on one case. status: "ok", "FAILED" (wrong results: rel_err > tol), "skipped", "error"."""

    op: str
    provider: str
    mode: str
    dtype: str
    shape: str
    device: str
    bytes: int
    flops: float | None = None
    x: int | None = None
    tags: tuple[str, ...] = ()
    time_ms: float | None = None
    rel_err: float | None = None  # max over checked outputs of ||out - ref|| / ||ref||, ref in float64
    tol: float | None = None
    status: str = "ok"
    note: str = ""
    input_sets: int = 1           # distinct input sets the timing rotated through (CPU caches, bench/timing.py)
    # filled in by the report from the ceilings and the peer's row
    gbps: float | None = None
    frac_copy: float | None = None
    tflops: float | None = None
    speedup: float | None = None  # peer time / this time

    @classmethod
    def for_case(cls, case: Case, provider: str) -> "Row":
        return cls(op=case.op, provider=provider, mode=case.mode, dtype=case.dtype_name, shape=case.shape_name,
                   device=case.device, bytes=case.bytes, flops=case.flops, x=case.x, tags=tuple(case.tags))

    def key(self) -> tuple:
        return (self.op, self.mode, self.dtype, self.shape)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tags"] = list(self.tags)
        return d


def load(names: list[str] | None = None) -> list[ModuleType]:
    """The registered op benchmark modules, those whose OP is in `names` when given (unknown names raise)."""
    modules = [importlib.import_module(name) for name in OPS]
    if not names:
        return modules
    known = {m.OP: m for m in modules}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--ops: unknown op(s) {unknown}; registered: {sorted(known)}")
    return [known[n] for n in names]
