"""The benchmark report: `python -m bench.report [--out DIR] [--quick] [--ops linear_scan,...]`.

Measures the ceilings, runs every registered op benchmark (bench/registry.py) on the GPU when there is one
(else small CPU sizes, and says so), and writes DIR/<device>-<date>.md, .json and per-op PNG plots.
Progress goes to stderr; stdout ends with the Markdown table, one line per row.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import signal
import sys
import time

import torch

from bench import registry, timing
from bench.ceilings import Ceilings, measure
from bench.registry import Row

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TABLE_COLUMNS = ("op", "provider", "mode", "dtype", "shape", "time ms", "GB/s", "% copy", "TFLOP/s", "rel err",
                 "speedup vs peer", "status")


class _Stop(BaseException):
    """Raised by SIGTERM (e.g. `timeout`): stop running cases, still write what was measured."""


def _on_sigterm(signum, frame):
    raise _Stop(f"signal {signum}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- environment

def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def _version(module: str) -> str:
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "?"))
    except Exception as err:  # noqa: BLE001
        return f"not available ({type(err).__name__})"


def _package_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _meta(device: torch.device, args) -> dict:
    import arkernels

    name = _device_name(device)
    meta = {
        "device_type": device.type,
        "device": name,
        "device_slug": _slug(name) if device.type == "cuda" else "cpu-" + _slug(name),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "arkernels": getattr(arkernels, "__version__", "?"),
        "arkernels_native": arkernels.native_available(),
        "arkernels_cuda_kernels": arkernels.cuda_kernels_available(),
        "host": platform.node(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "args": " ".join(sys.argv[1:]),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta["device_detail"] = (f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB, "
                                 f"sm_{props.major}{props.minor}, CUDA {torch.version.cuda}")
    else:
        meta["device_detail"] = f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    return meta


# ---------------------------------------------------------------- derived columns

def _derive(rows: list[Row], ceilings: Ceilings, peers: dict[str, str | None]) -> None:
    """GB/s, fraction of the copy bandwidth, TFLOP/s, and speedup = peer time / time (same case)."""
    peer_time = {}
    for r in rows:
        if peers.get(r.op) == r.provider and r.time_ms:
            peer_time[r.key()] = r.time_ms
    for r in rows:
        if not r.time_ms:
            continue
        r.gbps = r.bytes / r.time_ms / 1e6
        if ceilings.copy_gbps:
            r.frac_copy = r.gbps / ceilings.copy_gbps
        if r.flops:
            r.tflops = r.flops / r.time_ms / 1e9
        if r.provider != peers.get(r.op) and r.key() in peer_time:
            r.speedup = peer_time[r.key()] / r.time_ms


# ---------------------------------------------------------------- output

def _fmt(value, spec: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if spec == "num":  # 2920, 45.1, 0.123: three significant digits without exponents
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) >= 1e-3 else f"{value:.1e}"
    return format(value, spec)


def _cell(text: str, limit: int = 140) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


COLLAPSE_SKIPS = 4  # a (provider, skip reason) that repeats this often is one note instead of many rows


def _collapsed(rows: list[Row]) -> tuple[list[Row], list[str]]:
    """Rows for the Markdown table, and notes for the skips that repeat (every row stays in the JSON)."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.status == "skipped" and r.time_ms is None and r.rel_err is None:
            groups.setdefault((r.op, r.provider, r.note), []).append(r)
    drop = {id(r) for g in groups.values() if len(g) >= COLLAPSE_SKIPS for r in g}
    notes = [f"{op}: {provider} skipped in {len(g)} cases ({note}): "
             + ", ".join(f"{r.mode} {r.dtype} {r.shape}" for r in g)
             for (op, provider, note), g in groups.items() if len(g) >= COLLAPSE_SKIPS]
    return [r for r in rows if id(r) not in drop], notes


def _table(rows: list[Row]) -> list[str]:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in rows:
        status = r.status if not r.note else f"{r.status}: {r.note}"
        if r.status == "FAILED":
            status = f"**{status}**"
        cells = [r.op, r.provider, r.mode, r.dtype, r.shape, _fmt(r.time_ms, ".4g"), _fmt(r.gbps, "num"),
                 _fmt(r.frac_copy * 100 if r.frac_copy is not None else None, "num"), _fmt(r.tflops, "num"),
                 _fmt(r.rel_err, ".1e"), _fmt(r.speedup, ".2f") + ("x" if r.speedup is not None else ""),
                 _cell(status)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _header(meta: dict, ceilings: Ceilings) -> list[str]:
    lines = [f"# arkernels benchmark report: {meta['device']}", ""]
    if meta["device_type"] != "cuda":
        lines += ["> **This report ran on the CPU (no CUDA device was used). It is NOT a GPU measurement:** "
                  "sizes are small, the GPU providers did not run, and the GPU targets do not apply.", ""]
    lines += [
        f"- device: {meta['device']} ({meta['device_detail']})",
        f"- torch {meta['torch']}, triton {meta['triton']}, python {meta['python']}, arkernels {meta['arkernels']} "
        f"(native: {meta['arkernels_native']}, CUDA kernels: {meta['arkernels_cuda_kernels']})",
    ]
    load = meta.get("loadavg")
    if load:
        lines.append(f"- machine load (1-min load average, start / end): {load[0]:.1f} / {load[1]:.1f} on "
                     f"{os.cpu_count()} CPUs")
        if max(load) > 0.5 * (os.cpu_count() or 1) + 0.5:
            lines.append("  - **other processes were busy during this run: timings are noisy** (CPU kernels wait "
                         "for descheduled threads; GPU launches may be delayed)")
    if meta.get("peers"):
        lines.append("- peers: " + ", ".join(f"{k} {v}" for k, v in meta["peers"].items()))
    lines += [f"- date: {meta['time_utc']}; report took {meta.get('seconds', 0):.0f} s; "
              f"args: `{meta['args'] or '(none)'}`", "- ceilings, measured in this run:"]
    lines += ["  " + line for line in ceilings.lines()]
    return lines


LEGEND = ("GB/s: the op's minimal bytes (see its module) / time. % copy: GB/s / the copy bandwidth above. "
          "speedup vs peer: peer time / this time, same case. rel err: max over outputs (and gradients) of "
          "||out - ref|| / ||ref|| on the first two and last rows, ref in float64. status FAILED: rel err above "
          "the dtype's tolerance (timed anyway); skipped / error: the reason. Times: median, ms.")


def _plots(rows: list[Row], modules, stem: str) -> tuple[list[str], str | None]:
    """Per op and dtype: time vs sweep axis per provider (log-log), and speedup vs the peer."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as err:  # noqa: BLE001
        return [], f"plots not written: matplotlib is not available ({type(err).__name__}: {err})"
    written = []
    for mod in modules:
        mine = [r for r in rows if r.op == mod.OP and r.x is not None and r.time_ms]
        for dtype in sorted({r.dtype for r in mine}):
            sel = [r for r in mine if r.dtype == dtype]
            fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
            for ax, mode in zip(axes[:2], registry.MODES):
                for provider in dict.fromkeys(r.provider for r in sel):
                    pts = sorted((r.x, r.time_ms, r.status) for r in sel if r.provider == provider and r.mode == mode)
                    if not pts:
                        continue
                    failed = any(s == "FAILED" for _, _, s in pts)
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle="--" if failed else "-",
                            label=provider + (" (FAILED check)" if failed else ""))
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel(mod.SWEEP_AXIS)
                ax.set_ylabel("time, ms (median)")
                ax.set_title(f"{mod.OP} {dtype} {mode}")
                ax.grid(True, which="both", alpha=0.3)
                if ax.get_lines():
                    ax.legend(fontsize=8)
            ax = axes[2]
            any_speedup = False
            for provider in dict.fromkeys(r.provider for r in sel if r.provider.startswith("arkernels-")):
                for mode in registry.MODES:
                    pts = sorted((r.x, r.speedup) for r in sel
                                 if r.provider == provider and r.mode == mode and r.speedup is not None)
                    if pts:
                        any_speedup = True
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                                linestyle="-" if mode == "fwd" else "--", label=f"{provider} {mode}")
            ax.axhline(1.0, color="gray", linewidth=1)
            ax.set_xscale("log", base=2)
            ax.set_xlabel(mod.SWEEP_AXIS)
            ax.set_ylabel(f"speedup vs {getattr(mod, 'PEER', None)} (peer time / time)")
            ax.set_title(f"{mod.OP} {dtype}: speedup vs peer")
            ax.grid(True, which="both", alpha=0.3)
            if any_speedup:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "peer not measured", ha="center", va="center", transform=ax.transAxes)
            fig.suptitle(f"{rows[0].device if rows else ''}  —  {os.path.basename(stem)}", fontsize=9)
            fig.tight_layout()
            path = f"{stem}-{mod.OP}-{dtype}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written, None


def _method_notes(rows: list[Row], device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["timing: triton.testing.do_bench (CUDA events, median) clears the L2 with a 256 MB write before "
                "every timed call, so inputs come from HBM whatever their size; calls slower than "
                f"{timing.SLOW_CALL_MS:.0f} ms are timed by a few calls of our own with the same flush"]
    sets = [r.input_sets for r in rows if r.time_ms]
    text = "timing: perf_counter, median of repeats after a warm-up call"
    if sets and max(sets) > 1:
        text += (f"; each case rotates through {min(sets)}-{max(sets)} input sets so that its working set spans "
                 f"twice the last-level cache ({timing.llc_bytes() >> 20} MiB), as nothing flushes CPU caches")
    return [text]


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------- main

def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: bench/results)")
    p.add_argument("--quick", action="store_true", help="headline cases only")
    p.add_argument("--ops", default="", help="comma-separated op names (default: all registered)")
    p.add_argument("--providers", default="", help="comma-separated providers to run (default: all available)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for measuring (from the start); cases past it are recorded as skipped "
                        "(default: 220 on CUDA, 60 on the CPU)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    started = time.monotonic()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    signal.signal(signal.SIGTERM, _on_sigterm)

    meta = _meta(device, args)
    modules = registry.load([s for s in args.ops.split(",") if s])
    wanted = {s for s in args.providers.split(",") if s}
    peers_meta = {}
    for mod in modules:
        dist = getattr(mod, "PEER_PACKAGE", None)
        if dist:
            peers_meta[dist] = _package_version(dist) or "not installed"
    meta["peers"] = peers_meta

    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    _log(f"bench.report: {meta['device']} ({device}); torch {meta['torch']}, triton {meta['triton']}")
    rows: list[Row] = []
    notes: list[str] = []
    ceilings = Ceilings(copy_what="not measured", matmul_what="not measured")
    if args.budget_s is None:
        args.budget_s = 220.0 if device.type == "cuda" else 60.0
    deadline = started + args.budget_s
    try:
        ceilings = measure(device)
        for line in ceilings.lines():
            _log(line)
        for mod in modules:
            try:
                available = mod.providers(device)
                cases = mod.cases(device, args.quick)
            except Exception as err:  # noqa: BLE001  (one op's broken benchmark must not hide the others)
                notes.append(f"{mod.OP}: benchmark not run: {type(err).__name__}: {err}")
                continue
            names = [p for p, why in available.items() if why is None and (not wanted or p in wanted)]
            for p, why in available.items():
                if why is not None and (not wanted or p in wanted):
                    notes.append(f"{mod.OP}: provider {p} not run: {why}")
            for i, case in enumerate(cases, 1):
                if time.monotonic() > deadline:
                    for p in names:
                        row = Row.for_case(case, p)
                        row.status, row.note = "skipped", f"time budget of {args.budget_s:.0f} s used up"
                        rows.append(row)
                    continue
                t0 = time.monotonic()
                case_rows = mod.run(case, names)
                rows.extend(case_rows)
                summary = ", ".join(f"{r.provider}=" + (f"{r.time_ms:.3f}ms" if r.time_ms else r.status)
                                    + (" FAILED" if r.status == "FAILED" else "") for r in case_rows)
                _log(f"[{mod.OP} {i}/{len(cases)}] {case.mode} {case.dtype_name} {case.shape_name}: {summary} "
                     f"({time.monotonic() - t0:.1f} s)")
                gc.collect()
                if device.type == "cuda":
                    try:
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                    except Exception as err:  # noqa: BLE001  (a broken CUDA context: no later case can run)
                        errors = "; ".join(f"{r.provider}: {r.note}" for r in case_rows if r.status == "error")
                        raise _Stop(f"CUDA error in {mod.OP} {case.mode} {case.dtype_name} {case.shape_name} "
                                    f"({errors or type(err).__name__ + ': ' + str(err).splitlines()[0]})") from err
    except (_Stop, KeyboardInterrupt) as stop:
        notes.append(f"stopped early ({stop or 'interrupt'}): the rows above are the cases finished before")
        _log(f"stopped: {stop!r}; writing what was measured")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the report be written

    peers = {mod.OP: getattr(mod, "PEER", None) for mod in modules}
    _derive(rows, ceilings, peers)
    headline = {}
    for mod in modules:
        if hasattr(mod, "headline"):
            try:
                headline[mod.OP] = mod.headline(rows, ceilings)
            except Exception as err:  # noqa: BLE001
                headline[mod.OP] = [f"headline of {mod.OP} failed: {type(err).__name__}: {err}"]

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{meta['device_slug']}-{meta['date']}")
    pngs, plot_note = _plots(rows, modules, stem)
    if plot_note:
        notes.append(plot_note)
    meta["seconds"] = time.monotonic() - started
    if load_start is not None:
        meta["loadavg"] = [load_start, os.getloadavg()[0]]
    notes += _method_notes(rows, device)
    table_rows, skip_notes = _collapsed(rows)
    notes += skip_notes

    md = _header(meta, ceilings) + ["", "## Results", ""] + _table(table_rows) + ["", LEGEND, ""]
    for lines in headline.values():
        md += lines + [""]
    md += ["## Notes", ""] + [f"- {n}" for n in notes]
    md += [f"- plot: `{os.path.basename(p)}`" for p in pngs]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    with open(stem + ".json", "w") as f:
        json.dump(_json_safe({"meta": meta, "ceilings": ceilings.as_dict(), "rows": [r.as_dict() for r in rows],
                              "headline": headline, "notes": notes, "plots": [os.path.basename(p) for p in pngs]}),
                  f, indent=1)

    out = _header(meta, ceilings) + [""]
    for lines in headline.values():
        out += lines + [""]
    out += [f"- {n}" for n in notes]
    out += [f"written: {stem}.md, {stem}.json" + (f", {len(pngs)} PNG plots" if pngs else ""), "", "## Results", ""]
    out += _table(table_rows)
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
