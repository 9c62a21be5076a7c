"""Every backend compiles and runs a block and agrees with eager PyTorch."""

from pathlib import Path

import numpy as np
import pytest
import torch

from profiler.backends import BACKENDS, BackendUnavailable, CompileError, get_backend
from profiler.blocks import BlockSpec
from profiler.compile import cached_artifact, compile_model

KEYS = [
    "expanded_conv-input:14x14x16-output:14x14x16-expand:3-kernel:5-stride:1-idskip:1",
    "expanded_conv-input:14x14x16-output:7x7x24-expand:72-kernel:3-stride:2-idskip:0-se:1-hs:1",
    "expanded_conv-input:8x8x16-output:8x8x16-expand:6-kernel:3-stride:1-idskip:1-groups:2",
    "Conv-input:32x32x3-output:16x16x8",
    "Logits-input:4x4x64-output:10",
]


def _eager(spec):
    with torch.no_grad():
        return spec.build()(spec.example_input()).numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", KEYS)
def test_backend_matches_eager(backend, key, cache_dir):
    be = get_backend(backend)
    target = be.target_for("local")
    art = compile_model(backend, key, target, {}, str(cache_dir))
    from profiler.backends import Artifact

    runner = be.load(Artifact.from_dict(art), "local", 1)
    runner.run()
    (out,) = runner.outputs()
    np.testing.assert_allclose(out, _eager(BlockSpec.from_key(key)), rtol=1e-3, atol=1e-4)
    ms = runner.timer(3)()
    assert 0 < ms < 1000


def test_cache_hit_is_reused(cache_dir):
    be = get_backend("torch")
    t = be.target_for("local")
    a = compile_model("torch", KEYS[0], t, {}, str(cache_dir))
    hit = cached_artifact("torch", KEYS[0], t, {}, cache_dir)
    assert hit is not None and hit.path == a["path"]
    # another option set is another entry
    assert cached_artifact("torch", KEYS[0], t, {"per_op": True}, cache_dir) is None


def test_executorch_per_op(cache_dir):
    be = get_backend("executorch")
    art = compile_model("executorch", KEYS[0], be.target_for("local"), {"per_op": True}, str(cache_dir))
    from profiler.backends import Artifact

    runner = be.load(Artifact.from_dict(art), "local", 1)
    ops = runner.per_op(3)
    assert ops, "the Inspector gave no events"
    assert all(o["p50_ms"] is None or o["p50_ms"] >= 0 for o in ops)
    assert any(o["p50_ms"] for o in ops)


def test_tvm_cross_target_compiles_or_says_why(cache_dir, tmp_path):
    be = get_backend("tvm")
    target = be.target_for("local", cross="aarch64-linux")

    import shutil

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        with pytest.raises(CompileError, match="cross compiler"):
            be.compile(BlockSpec.from_key(KEYS[3]), target, tmp_path / "x.so", {})
    else:
        be.compile(BlockSpec.from_key(KEYS[3]), target, tmp_path / "x.so", {})
        assert (tmp_path / "x.so").read_bytes()[:4] == b"\x7fELF"


def test_executorch_has_no_cuda():
    with pytest.raises(BackendUnavailable):
        get_backend("executorch").target_for("local:cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine; nothing is faked")
@pytest.mark.parametrize("backend", ["torch", "tvm"])
def test_cuda_backends_match_eager(backend, cache_dir):
    be = get_backend(backend)
    target = be.target_for("local:cuda")
    art = compile_model(backend, KEYS[0], target, {}, str(cache_dir))
    from profiler.backends import Artifact

    runner = be.load(Artifact.from_dict(art), "local:cuda", 1)
    runner.run()
    np.testing.assert_allclose(runner.outputs()[0], _eager(BlockSpec.from_key(KEYS[0])), rtol=1e-3, atol=1e-3)


def test_unknown_backend():
    with pytest.raises(ValueError, match="known: executorch, tvm, torch"):
        get_backend("tflite")


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="no CUDA toolkit (nvcc) to build with")
def test_tvm_builds_a_cuda_library_without_a_gpu(tmp_path):
    # building needs only the toolkit; running needs a GPU, which the cuda-marked tests cover
    be = get_backend("tvm")
    target = '{"arch": "sm_80", "kind": "cuda"}'
    be.compile(BlockSpec.from_key(KEYS[0]), target, tmp_path / "b.so", {})
    assert (tmp_path / "b.so").stat().st_size > 0


def test_tvm_builds_a_phone_gpu_library_with_opencl_kernels(tmp_path):
    """--gpu with tvm: OpenCL kernels inside an aarch64 Android library (runs only on a phone)."""
    import json
    import shutil

    from profiler.backends._tvm import PHONE_GPU_TARGET

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)")
    be = get_backend("tvm")
    be.compile(BlockSpec.from_key(KEYS[3]), json.dumps(PHONE_GPU_TARGET, sort_keys=True), tmp_path / "g.so", {})
    lib = (tmp_path / "g.so").read_bytes()
    assert lib[:4] == b"\x7fELF" and lib[18] == 183  # e_machine 183: AArch64
    assert b"__kernel" in lib  # the OpenCL C source of the kernels travels in the library


def test_executorch_runner_does_not_import_the_exporter(cache_dir):
    """A fresh timing process loads and runs a .pte with the runtime alone: the bindings' Python module
    would import executorch.exir (the whole exporter, seconds of every worker start); the runner's
    output still matches eager PyTorch."""
    import json
    import subprocess
    import sys

    be = get_backend("executorch")
    art = compile_model("executorch", KEYS[0], be.target_for("local"), {}, str(cache_dir))
    code = (
        "import json, sys\n"
        "from profiler.backends import Artifact, get_backend\n"
        f"art = Artifact.from_dict(json.loads({json.dumps(art)!r}))\n"
        "runner = get_backend('executorch').load(art, 'local', 1)\n"
        "runner.run()\n"
        "print(json.dumps({'exir': sorted(m for m in sys.modules if m.startswith('executorch.exir')),\n"
        "                  'out': runner.outputs()[0].ravel().tolist()}))\n"
    )
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["exir"] == []
    np.testing.assert_allclose(np.asarray(got["out"]), _eager(BlockSpec.from_key(KEYS[0])).ravel(), rtol=1e-3, atol=1e-4)


def test_tvm_tuning_builds_its_candidates_without_importing_every_tensor_intrinsic(tmp_path):
    """MetaSchedule on this CPU: a block tuned with a small budget (random cost model: the xgboost
    one is the `tune` extra) still matches eager PyTorch, and the builder's workers never import
    ``tvm.s_tir.tensor_intrin`` (the stock builder does, inside its 30 s timeout: 50-80 s on a 2-vCPU VM,
    so workers were killed mid-import and restarted)."""
    import subprocess
    import sys

    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    from profiler.backends._tvm import EAGER_REL_TOL, _run_here, _tune, check_against_eager, host_cpu_target

    spec = BlockSpec.from_key("Conv-input:8x8x3-output:8x8x8")  # one fused kernel: one task
    m, x = spec.build().eval(), spec.example_input()
    with torch.no_grad():
        mod = from_exported_program(torch.export.export(m, (x,)), unwrap_unit_return_tuple=True)
    tgt = tvm.target.Target(host_cpu_target())
    tuned, info = _tune(mod, tgt, trials=2, threads=1, cost_model="random")
    assert info["tasks"] == 1 and info["tasks_tuned_now"] == 1 and info["database"] is None
    out = _run_here(tvm.compile(tuned, tgt), x.numpy())  # what compile() checks a tuned block with
    np.testing.assert_allclose(out, _eager(spec), rtol=1e-3, atol=1e-4)
    assert check_against_eager(out, _eager(spec), "the tuned block") <= EAGER_REL_TOL
    # what a build worker runs: register the builder, build a kernel, then look at what got imported
    code = (
        "import sys, tvm\n"
        "from tvm import te\n"
        "from profiler.backends._tvm import _MS_BUILD, _builder_worker_init\n"
        "_builder_worker_init()\n"
        "a = te.placeholder((16,), name='a'); b = te.compute((16,), lambda i: a[i] * 2.0, name='b')\n"
        "mod = tvm.IRModule({'main': te.create_prim_func([a, b])})\n"
        "tvm.get_global_func(_MS_BUILD)(mod, tvm.target.Target('llvm'), None)\n"
        "print('tvm.s_tir.tensor_intrin' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "False"


def test_a_compiled_block_that_computes_something_else_is_refused_with_its_error():
    """The check a tuned TVM block passes before it is timed: float32 reordering passes, a wrong
    value, a wrong shape or a NaN is a CompileError that says by how much."""
    from profiler.backends._tvm import EAGER_REL_TOL, check_against_eager

    expected = np.random.default_rng(0).normal(size=(1, 8, 4, 4)).astype(np.float32)
    assert check_against_eager(expected * (1 + 1e-6), expected, "k") < EAGER_REL_TOL
    wrong = expected.copy()
    wrong[0, 3, 1, 2] += 0.05 * np.abs(expected).max()
    with pytest.raises(CompileError, match=r"k computes a different block: .*5\.00e-02 of its largest value"):
        check_against_eager(wrong, expected, "k")
    with pytest.raises(CompileError, match="shape"):
        check_against_eager(expected[:, :4], expected, "k")
    nan = expected.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(CompileError, match="inf"):
        check_against_eager(nan, expected, "k")
