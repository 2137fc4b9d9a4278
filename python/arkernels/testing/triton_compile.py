"""Compiling a Triton kernel for the GPU on a machine without one (triton.compile for an sm_90a target):
catches GPU-only compile errors (the interpreter accepts more than the compiler) and reports the shared
memory and register use, so that CI checks what only a GPU run would otherwise show."""
from __future__ import annotations


def compile_for_sm90(fn, arg_types: dict, constexprs: dict, *, num_warps: int, num_stages: int = 1):
    """The compiled kernel of the @triton.jit `fn` with every argument typed (`arg_types`: name -> "*bf16",
    "*i32", "i32", "fp32", ...; the constexprs' names may be left out) and the constexpr values given."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: "constexpr" if name in constexprs else arg_types[name] for name in fn.arg_names}
    src = ASTSource(fn, signature, constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps,
                                                                              num_stages=num_stages))
