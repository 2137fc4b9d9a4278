"""One benchmark module per op (bench_<op>.py), registered in bench/registry.py."""
