"""Benchmark report of arkernels: `python -m bench.report` (see bench/README.md).

timing.py    one timing of one callable (CUDA events through triton's do_bench, or perf_counter on CPU)
ceilings.py  the roofline measured in the same run (copy bandwidth, matmul rate)
registry.py  what an op benchmark provides (Case, Row) and the list of registered ones
ops/         one module per op: its cases, providers, correctness check and timing
report.py    runs everything and writes the Markdown / JSON / PNG report
"""
