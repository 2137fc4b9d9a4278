"""Loading peer libraries' kernels for side-by-side tests and benchmarks, with the reason when one
cannot be loaded (recorded in the benchmark report, or a test's skip message)."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _load_without_package_init(package: str, module: str):
    """Imports `package.<...>.module` without running the package's __init__ files: stub package modules
    with the real search paths are put in sys.modules first (only for packages not imported yet).
    For peers whose top-level __init__ imports optional compiled extensions that are not needed by the
    module wanted."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{package} is not installed")
    parts = module.split(".")
    for depth in range(1, len(parts)):
        name = ".".join(parts[:depth])
        if name in sys.modules:
            continue
        stub = types.ModuleType(name)
        stub.__path__ = [p + "/" + "/".join(parts[1:depth]) if depth > 1 else p
                         for p in spec.submodule_search_locations]
        sys.modules[name] = stub
    return importlib.import_module(module)


def mamba_ssm_selective_state_update():
    """(mamba-ssm's Triton ``selective_state_update`` or None, why it is missing or how it was loaded).

    ``mamba_ssm/__init__.py`` (2.3.2) imports the optional ``selective_scan_cuda`` extension, which a
    Triton-only install lacks; the Triton module itself does not need it, so it is then loaded without
    the package's __init__ files."""
    name = "mamba_ssm.ops.triton.selective_state_update"
    try:
        return importlib.import_module(name).selective_state_update, "imported"
    except Exception as err:  # noqa: BLE001  (ImportError, or a failing optional extension)
        first = f"{type(err).__name__}: {err}"
    try:
        fn = _load_without_package_init("mamba_ssm", name).selective_state_update
        return fn, f"loaded without mamba_ssm/__init__.py ({first})"
    except Exception as err:  # noqa: BLE001
        return None, f"not importable ({first}; without the package __init__: {type(err).__name__}: {err})"


def mamba_ssm_selective_scan():
    """(mamba-ssm's CUDA ``selective_scan_fn`` or None, why it is missing or how it was loaded).

    The CUDA extension ``selective_scan_cuda`` is opt-in in mamba-ssm 2.3; on the GPU machine
    ``scripts/gpu_check.sh mamba-peer`` builds it with ../shared/peers/build_mamba_scan.py into
    /tmp/mamba_peer and puts that folder and the extracted sources on PYTHONPATH."""
    try:
        ext = importlib.import_module("selective_scan_cuda")
    except Exception as err:  # noqa: BLE001
        return None, f"not importable: its CUDA extension selective_scan_cuda is not built ({type(err).__name__}: {err})"
    name = "mamba_ssm.ops.selective_scan_interface"
    try:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001  (the package __init__ pulls optional modules)
            module = _load_without_package_init("mamba_ssm", name)
    except Exception as err:  # noqa: BLE001
        return None, f"not importable ({type(err).__name__}: {err})"
    module.selective_scan_cuda = ext
    return module.selective_scan_fn, "imported"
