"""The kernels compile for a real GPU (sm_90) with the block sizes the launchers pick.

The CPU interpreter accepts some code the compiler rejects, so without a GPU this is the check
that the compiled path builds. Triton compiles ahead of time without a device; it runs in a
fresh process because this session's triton is the interpreter.
"""
import os
import subprocess
import sys

import pytest

from gancore.kernels._triton import HAS_TRITON

SCRIPT = r"""
import importlib
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

mbd = importlib.import_module("gancore.kernels.minibatch_l1")
gp = importlib.import_module("gancore.kernels.gradient_penalty")


def build(fn, pointers, scalars, num_warps=4, **constexprs):
    signature = {**pointers, **dict.fromkeys(scalars.split(), "i32")}
    signature.update(dict.fromkeys(constexprs, "constexpr"))
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


for dt in ("fp32", "bf16", "fp16", "fp64"):
    acc = tl.float64 if dt == "fp64" else tl.float32
    p, a = "*" + dt, "*fp64" if dt == "fp64" else "*fp32"
    for C in (1, 5):
        for fn, names, tile in (
            (mbd._mbd_fwd_kernel, "M O", mbd._FWD_TILE),
            (mbd._mbd_bwd_kernel, "M G DM", mbd._BWD_TILE),
            (mbd._mbd_bwd2_kernel, "M G V DG DM", mbd._BWD2_TILE),
        ):
            tile //= 2 if dt == "fp64" else 1
            build(fn, dict.fromkeys(names.split(), p), "N B C", EXCLUDE_SELF=C == 5, ACC=acc,
                  **mbd._blocks(4096, C, tile))
    build(gp._lerp_kernel, dict(R=p, F=p, EPS=a, X=p), "numel per_sample", BLOCK=1024)
    build(gp._gp_fwd_kernel, dict(G=p, NORM=a, SCALE=a, OUT=a), "N D", ACC=acc, BLOCK_N=4,
          BLOCK_D=1024)
    build(gp._gp_bwd_kernel, dict(G=p, NORM=a, SCALE=a, GRAD_OUT=p, DG=p), "numel D", BLOCK=1024)
print("compiled")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]
