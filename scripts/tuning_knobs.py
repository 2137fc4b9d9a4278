"""Launch knobs for GPU runs against a tuning build (the device kit's libarkernels.so), set before any
work runs, so that a candidate kernel that is not yet the default runs the torch tests and the benchmark
report through the same launcher and entry points as the default does. As a pytest plugin (every test
process, xdist workers too) or as a runner of a module:

    ARK_TUNING_KNOBS="sscan_fwd_paired_bc=1,sscan_fwd_reduce=0" PYTHONPATH=scripts \
        python -m pytest -p tuning_knobs tests/ops/test_selective_scan.py
    ARK_TUNING_KNOBS="..." python scripts/tuning_knobs.py bench.report --quick

Knob names are tuning.cpp's kNames. The run fails at start-up (never silently runs the defaults) when the
variable names an unknown knob or the loaded library has no ark_tuning_set.
"""

import ctypes
import os
import runpy
import sys


def _parse(spec):
    knobs = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"ARK_TUNING_KNOBS: expected name=value, got {item!r}")
        knobs.append((name.strip(), int(value)))
    return knobs


def _loaded_library():
    # The torch extension links libarkernels.so; open the very file it loaded, not another copy on the path.
    import arkernels  # noqa: F401  (loads the extension and with it the library)

    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libarkernels" in line and line.rstrip().endswith(".so")}
    if len(paths) != 1:
        raise RuntimeError(f"ARK_TUNING_KNOBS: expected one loaded libarkernels.so, found {sorted(paths)}")
    return paths.pop()


_setter = []  # (path, ark_tuning_set) of the loaded library, found once per process


def set_knob(name, value):
    """Sets one knob (tuning.cpp's kNames) in the loaded libarkernels; returns the library's path."""
    if not _setter:
        path = _loaded_library()
        try:
            fn = ctypes.CDLL(path).ark_tuning_set
        except AttributeError as err:
            raise RuntimeError(f"{path} has no ark_tuning_set") from err
        fn.argtypes = [ctypes.c_char_p, ctypes.c_int]
        fn.restype = ctypes.c_int
        _setter.append((path, fn))
    path, fn = _setter[0]
    if fn(name.encode(), int(value)) != 1:
        raise ValueError(f"{path} does not know the knob {name!r}")
    return path


def apply(spec):
    """Sets the knobs of `spec` ("name=value,..."); returns a description, or None for an empty spec."""
    path = None
    for name, value in _parse(spec):
        path = set_knob(name, value)
    return f"{spec} ({path})" if path else None


def pytest_configure(config):
    config._ark_tuning_knobs = apply(os.environ.get("ARK_TUNING_KNOBS", ""))


def pytest_report_header(config):
    knobs = getattr(config, "_ark_tuning_knobs", None)
    return f"arkernels tuning knobs: {knobs}" if knobs else None


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: ARK_TUNING_KNOBS=name=value,... python scripts/tuning_knobs.py MODULE [ARGS...]")
    print(f"arkernels tuning knobs: {apply(os.environ.get('ARK_TUNING_KNOBS', ''))}", file=sys.stderr)
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.getcwd())  # as `python -m` does: the module is found from the working directory
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
