import shutil
import subprocess

import pytest
import torch

from gancore.provenance import build_info, build_key, checkout_commit


def test_build_info_names_what_changes_cpu_arithmetic():
    info = build_info()
    assert info["torch"] == torch.__version__
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["threads"] == torch.get_num_threads()
    assert info["commit"] is None or len(info["commit"].split("+")[0]) == 40
    key = build_key(info)
    assert info["cpu_capability"] in key and torch.__version__ in key


def git(root, *argv):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *argv], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_commit_is_dirty_for_changed_code_not_for_generated_results(tmp_path):
    files = {
        "gancore/trainer.py": "x = 1\n",
        "kernels/op.c": "int x;\n",
        "gancore/recipes/grid25-best.toml": "[train]\n",
        "gancore/recipes/scores.toml": "",
        "benchmarks/RESULTS.md": "table\n",
        "benchmarks/results.json": "{}\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "start")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert checkout_commit(tmp_path) == head

    # what a benchmark invocation rewrites, and docs, leave the code as committed
    for name in ("gancore/recipes/scores.toml", "benchmarks/RESULTS.md", "benchmarks/results.json"):
        (tmp_path / name).write_text("regenerated\n")
    (tmp_path / "notes.py").write_text("untracked\n")
    assert checkout_commit(tmp_path) == head

    for name in ("gancore/trainer.py", "kernels/op.c", "gancore/recipes/grid25-best.toml"):
        original = (tmp_path / name).read_text()
        (tmp_path / name).write_text(original + "\n")
        assert checkout_commit(tmp_path) == head + "+dirty", name
        (tmp_path / name).write_text(original)


def test_no_checkout_has_no_commit(tmp_path):
    assert checkout_commit(tmp_path) is None
