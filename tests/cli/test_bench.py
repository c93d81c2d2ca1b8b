"""`gancore bench` at tiny sizes: the table, the JSON, --compare, and one-line errors (exit 2).

The Triton provider runs here under TRITON_INTERPRET=1 (tests/conftest.py), the path the
command takes unchanged on a CUDA machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from cli_helpers import run_cli
from gancore.kernels import bench as kb
from gancore.kernels._cpu import library
from gancore.kernels._triton import HAS_TRITON

TINY = ["--rounds", "3", "--device", "cpu"]


def rows(out: str) -> dict[tuple[str, str, str], str]:
    """(size, mode, provider) -> the rest of the table row."""
    table = {}
    for line in out.splitlines()[1:]:
        size, mode, provider, *rest = line.split(maxsplit=3)
        table[size, mode, provider] = rest[0] if rest else ""
    return table


@pytest.mark.skipif(library() is None or not HAS_TRITON, reason="needs a C compiler and triton")
def test_mbd_every_provider_mode_and_json(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(kb, "_compiled", lambda fn: fn)  # torch.compile's first call costs ~10 s
    monkeypatch.setitem(sys.modules, "pykeops", None)  # as if not installed (KeOps compiles for minutes)
    out_file = tmp_path / "mbd.json"
    code, out, err = run_cli(capsys, "bench", "mbd", *TINY, "--sizes", "9x2x3", "--providers",
                             "cpu,reference,naive,compile,keops,triton", "--json", str(out_file))
    assert code == 0, err
    table = rows(out.split("\nwrote")[0])
    assert len(table) == 3 * 6
    for mode in kb.MODES:
        assert table["9x2x3", mode, "reference"].endswith("1.00x")
        for provider in ("cpu", "naive", "triton"):
            assert table["9x2x3", mode, provider].endswith("x"), table["9x2x3", mode, provider]
    assert table["9x2x3", "fwd", "keops"] == "skipped: pykeops not installed"
    data = json.loads(out_file.read_text())
    assert data["format"] == kb.FORMAT
    assert data["machine"]["torch"] == torch.__version__
    assert data["machine"]["threads"] == torch.get_num_threads()
    assert {"cpu_capability", "device_name"} <= set(data["machine"])
    cpu = next(r for r in data["results"] if r["provider"] == "cpu" and r["mode"] == "fwd+bwd")
    assert len(cpu["times_s"]) == 3 and cpu["median_s"] == sorted(cpu["times_s"])[1]
    assert cpu["work_per_s"] == pytest.approx(9 * 9 * 2 * (9 * 3 + 6) / cpu["median_s"])
    ref = next(r for r in data["results"] if r["provider"] == "reference" and r["mode"] == "fwd+bwd")
    assert cpu["vs_reference"] == pytest.approx(ref["median_s"] / cpu["median_s"])
    assert "gancore bench mbd" in err and "gancore bench" not in out  # the progress bar: stderr only


def test_naive_is_skipped_with_the_reason_when_it_would_not_fit(capsys, monkeypatch):
    monkeypatch.setattr(kb, "NAIVE_MEMORY_SHARE", 1e-12)
    code, out, err = run_cli(capsys, "bench", "mbd", *TINY, "--sizes", "9x2x3", "--modes", "fwd",
                             "--providers", "reference,naive")
    assert code == 0, err
    assert rows(out)["9x2x3", "fwd", "naive"].startswith("skipped: needs ~0.0 GiB of (N, N, B, C) temporaries")


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_gp(capsys):
    code, out, err = run_cli(capsys, "bench", "gp", *TINY, "--sizes", "8x5", "--modes", "fwd,fwd+bwd",
                             "--providers", "reference,triton,cpu,copy")
    assert code == 0, err
    table = rows(out)
    assert table["8x5", "fwd+bwd", "reference"].endswith("1.00x")
    assert table["8x5", "fwd+bwd", "triton"].endswith("x")
    assert table["8x5", "fwd+bwd", "cpu"] == "skipped: no cpu version of gp"
    assert table["8x5", "fwd", "copy"].endswith("x")  # the bandwidth yardstick: 2 x 8 x 5 x 4 bytes
    assert table["8x5", "fwd+bwd", "copy"] == "skipped: a bandwidth yardstick: fwd only"


def _result(median: float, iqr: float) -> kb.Result:
    return kb.Result("mbd", "cpu", "fwd", "9x2x3", median_s=median, iqr_s=iqr)


def test_regressions_beyond_the_measured_noise():
    baseline = {("mbd", "cpu", "fwd", "9x2x3"): {"median_s": 1.0, "iqr_s": 0.05}}
    assert kb.regressions([_result(1.09, 0.05)], baseline) == []  # within both IQRs
    assert kb.regressions([_result(0.5, 0.05)], baseline) == []  # faster
    assert kb.regressions([_result(1.04, 0.0)], {k: {"median_s": 1.0, "iqr_s": 0.0} for k in baseline}) == []  # < 5%
    (line,) = kb.regressions([_result(1.2, 0.05)], baseline)
    assert line.startswith("mbd cpu fwd 9x2x3: 1200.00 ms vs 1000.00 ms (+20%")


def test_compare_exits_1_on_a_regression(capsys, tmp_path):
    base = tmp_path / "base.json"
    args = ["bench", "mbd", *TINY, "--sizes", "9x2x3", "--modes", "fwd", "--providers", "reference"]
    assert run_cli(capsys, *args, "--json", str(base))[0] == 0
    data = json.loads(base.read_text())
    data["results"][0].update(median_s=1e-9, iqr_s=0.0)  # a baseline nothing can match
    base.write_text(json.dumps(data))
    code, out, err = run_cli(capsys, *args, "--compare", str(base))
    assert code == 1
    assert "regression: mbd reference fwd 9x2x3:" in out and "1 regression(s)" in out
    data["results"][0].update(median_s=1e3)  # a baseline everything beats
    base.write_text(json.dumps(data))
    code, out, err = run_cli(capsys, *args, "--compare", str(base))
    assert code == 0 and "0 regression(s)" in out


@pytest.mark.parametrize("args, message", [
    (["mbd", "--sizes", "512x16"], "--sizes '512x16': a mbd size is NxBxC with N >= 2"),
    (["mbd", "--sizes", "1x3x2"], "a mbd size is NxBxC with N >= 2"),
    (["gp", "--sizes", "64xD"], "--sizes '64xD': a gp size is NxD"),
    (["mbd", "--sizes", ","], "give at least one size"),
    (["mbd", "--providers", "cpu,fast"], "--providers 'cpu,fast': choose from cpu, reference"),
    (["gp", "--providers", ""], "--providers '': choose from"),
    (["mbd", "--modes", "bwd"], "--modes 'bwd': choose from fwd, fwd+bwd, bwd2"),
    (["mbd", "--device", "tpu"], "Invalid value for '--device'"),
    (["mbd", "--compare", "missing.json"], "--compare missing.json: No such file"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "bench", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cuda_without_a_gpu_and_a_foreign_baseline(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(capsys, "bench", "mbd", "--device", "cuda")
    assert code == 2 and "--device cuda: no CUDA GPU is visible here; use --device cpu" in err
    other = tmp_path / "other.json"
    other.write_text('{"results": []}')
    code, _, err = run_cli(capsys, "bench", "mbd", "--compare", str(other))
    assert code == 2 and "not a gancore bench result" in err


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_cpu_peak_memory_sees_every_call_temporaries():
    # 16 MiB allocated, touched and freed per call: every call must read 16 MiB, though glibc
    # would keep such a block in its heap after the first frees (a fresh process: this one's
    # allocator has a history).
    script = (
        "import torch\n"
        "from gancore.kernels import bench\n"
        "bench._return_large_blocks_to_the_os()\n"
        "print([bench.peak_mib(lambda: torch.ones(2**22), 'cpu') for _ in range(4)])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == pytest.approx([16] * 4, abs=2)
