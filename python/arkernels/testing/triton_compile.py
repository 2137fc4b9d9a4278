"""Compiling a Triton kernel for the GPU on a machine without one (triton.compile for an sm_90a target):
catches GPU-only compile errors (the interpreter accepts more than the compiler) and reports the shared
memory and register use, so that CI checks what only a GPU run would otherwise show."""
from __future__ import annotations

import os
import subprocess
import tempfile


def compile_for_sm90(fn, arg_types: dict, constexprs: dict, *, num_warps: int, num_stages: int = 1,
                     aligned=()):
    """The compiled kernel of the @triton.jit `fn` with every argument typed (`arg_types`: name -> "*bf16",
    "*i32", "i32", "fp32", ...; the constexprs' names may be left out) and the constexpr values given.
    `aligned`: the arguments a launch would specialise as divisible by 16 (pointers to 16-byte aligned data,
    ints that are multiples of 16, such as the strides of contiguous rows). Without it every address counts
    as unaligned: loads go element by element and are not pipelined, which a real launch never sees."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: "constexpr" if name in constexprs else arg_types[name] for name in fn.arg_names}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned if name not in constexprs}
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps,
                                                                              num_stages=num_stages))


def cubin_resources(cubin: bytes) -> dict:
    """{"REG": registers per thread, "STACK": spill stack bytes, "SHARED": ...} of a cubin, as strings, read by
    the cuobjdump that ships with Triton."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    line = next((x for x in out.splitlines() if "REG:" in x), "")
    return dict(kv.split(":") for kv in line.split() if ":" in kv)


SMEM_LIMIT = 232448  # shared memory bytes a block may use on sm_90 (227 KB)


def compile_report(compile_fn) -> tuple[str, bool]:
    """Runs compile_fn() (returning a compiled kernel) and gives the columns "registers spill-bytes shared-bytes"
    (or the compile error) and whether it failed: a compile error, or shared memory past what a launch gets."""
    try:
        k = compile_fn()
    except Exception as err:  # noqa: BLE001  (report and go on: the callers list every variant)
        return f"COMPILE ERROR {type(err).__name__}: {str(err)[:200]}", True
    res = cubin_resources(k.asm["cubin"])
    smem = k.metadata.shared
    over = smem > SMEM_LIMIT
    return (f"{res.get('REG', '?'):>5s} {res.get('STACK', '?'):>7s} {smem:7d}"
            + ("  > 227 KB: launch fails" if over else "")), over
