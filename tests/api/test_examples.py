"""Every example in examples/ and the README's Python API example run (with few steps)."""
import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_the_four_examples_exist():
    assert [path.name for path in EXAMPLES] == ["conv_images.py", "inline_plugin.py", "mlp_unrolled.py", "resume.py"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
def test_example_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GANCORE_EXAMPLE_STEPS", "8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    expected = {
        "conv_images": r"step 8: \d+/16 bars drawn",
        "inline_plugin": r"plugins \['one-sided-label-smoothing'\]: modes captured \d/8",
        "mlp_unrolled": r"modes captured \d/8",
        "resume": r"trained to step 8 in runs/example-resume\nresumed to step 16; evaluations at steps \[4, 8, 12, 16\]",
    }[path.stem]
    assert re.search(expected, out), out
    if path.stem == "resume":
        assert sorted(p.name for p in (tmp_path / "runs" / "example-resume" / "checkpoints").iterdir())[-1] == "step-00000016.pt"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch):
    code = readme_example().replace("steps=2000", "steps=6").replace("steps=3000", "steps=9")
    assert "steps=6" in code and "steps=9" in code
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(_write(tmp_path / "readme_example.py", code))
    assert namespace["result"].summary["step"] == 9 and len(namespace["log"].d_losses) == 6
    assert namespace["samples"].shape == (1000, 2)
    assert (tmp_path / "runs" / "my-ring" / "summary.json").is_file()


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_the_readme_plugin_authoring_example_runs_inline(tmp_path):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("## Writing a plugin"):], re.S).group(1)
    namespace = runpy.run_path(_write(tmp_path / "noisy.py", code))
    import gancore

    result = gancore.fit(plugins=[(namespace["LabelNoise"], {"share": 0.1})], steps=5, batch_size=32, z_dim=4, device="cpu", eval_samples=100, progress=False)
    assert result.summary["plugins"] == ["label-noise"] and result.trainer.config.plugins["label-noise"].share == 0.1
    with pytest.raises(gancore.GancoreError, match="^label-noise.share must be below 1$"):
        gancore.fit(plugins=[(namespace["LabelNoise"], {"share": 1.0})], steps=5, device="cpu", progress=False)
