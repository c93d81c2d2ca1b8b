"""One bad plugin package must not break every command: it is skipped with one warning naming
it and its distribution, and is an error only when asked for with --plugin."""
from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from cli_helpers import TINY_FLAGS, run_cli
from plugin_packages import fake_distribution

HEADER = "from gancore import hookimpl\n"

# one plugin class per way a package can be broken; the module name is made unique per test
BROKEN = {  # kind: (source, what the warning says)
    "add-options": ('''
        class Plugin:
            """Fails declaring its options."""
            @hookimpl
            def gancore_add_options(self, options):
                raise RuntimeError("no options today")
    ''', "failed in gancore_add_options: RuntimeError: no options today"),
    "register-commands": ('''
        class Plugin:
            """Fails adding its commands."""
            @hookimpl
            def gancore_register_commands(self, cli):
                raise KeyError("cli")
    ''', "failed in gancore_register_commands: KeyError: 'cli'"),
    "misspelled-hook": ('''
        class Plugin:
            """Implements a hook that does not exist."""
            @hookimpl
            def gancore_step_ennd(self, step):
                pass
    ''', "is invalid: unknown hook 'gancore_step_ennd'"),
    "wrong-argument": ('''
        class Plugin:
            """Asks a hook for an argument it does not have."""
            @hookimpl
            def gancore_step_end(self, stepp):
                pass
    ''', "is invalid: Plugin 'shaky' for hook 'gancore_step_end'"),
    "constructor": ('''
        class Plugin:
            """Fails being created."""
            def __init__(self):
                raise ValueError("half-installed")
    ''', "failed in __init__: ValueError: half-installed"),
}


@pytest.fixture
def install(tmp_path, monkeypatch, request):
    """``install(name, dist, source, version="1.0")``: a plugin distribution on sys.path for this test."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    counter = iter(range(100))

    def make(name: str, dist: str, source: str, version: str = "1.0") -> None:
        module = f"fake_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}_{next(counter)}"
        fake_distribution(folder, dist, version, {name: "Plugin"}, module, HEADER + textwrap.dedent(source))

    return make


def _warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("gancore: warning:")]


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_installed_plugin_is_skipped_by_every_command(capsys, tmp_path, install, kind):
    source, reason = BROKEN[kind]
    install("shaky", "shaky-dist", source)
    for argv in (["--help"], ["--version"], ["plugins"], ["train", *TINY_FLAGS, "--steps", "2", "--out", str(tmp_path / "runs")]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, (argv, err)
        assert "Traceback" not in err
        warnings = _warning_lines(err)
        assert len(warnings) == 1 and f"plugin shaky (shaky-dist 1.0) {reason}" in warnings[0] and warnings[0].endswith("it is skipped"), err
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "-p", "shaky", "--out", str(tmp_path / "runs"))
    assert code == 2
    error = err.splitlines()[-1]
    assert error.startswith(f"gancore: error: plugin shaky (shaky-dist 1.0) {reason}") and error.endswith("--plugin shaky")


def test_a_third_party_plugin_cannot_take_a_builtin_name(capsys, tmp_path, install):
    install("pacgan", "impostor", '''
        class Plugin:
            """Claims pacgan's name."""
    ''', version="6.6")
    code, out, err = run_cli(capsys, "plugins")
    assert code == 0
    assert "pacgan  (gancore " in out and "impostor" not in out
    (warning,) = _warning_lines(err)
    assert "pacgan of impostor 6.6 is skipped: gancore provides a plugin of that name already" in warning
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--steps", "2", "-p", "pacgan", "--out", str(tmp_path / "runs"))
    assert code == 0, err
    recorded = json.loads((tmp_path / "runs" / "ring8-pacgan-s0" / "run.json").read_text())["plugins"]
    assert recorded["pacgan"]["package"] == "gancore"


FAILS_IN_CONFIGURE = '''
    class Plugin:
        """Fails validating its options."""
        @hookimpl
        def gancore_configure(self, options):
            raise ZeroDivisionError("division by zero")
'''

FAILS_IN_LOAD_STATE = '''
    import torch
    class Plugin:
        """Keeps a counter, but cannot read it back."""
        @hookimpl
        def gancore_state_dict(self):
            return {"count": torch.tensor(1)}
        @hookimpl
        def gancore_load_state_dict(self, state):
            raise AttributeError("'Plugin' has no attribute 'count'")
'''


def test_an_exception_in_configure_names_plugin_package_and_hook(capsys, tmp_path, install):
    install("fussy", "fussy-dist", FAILS_IN_CONFIGURE, version="0.3")
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "-p", "fussy", "--out", str(tmp_path / "runs"))
    assert code == 2
    assert err == "gancore: error: plugin fussy (fussy-dist 0.3) failed in gancore_configure: ZeroDivisionError: division by zero\n"
    assert not (tmp_path / "runs").exists()


def test_an_exception_in_load_state_dict_names_plugin_package_and_hook(capsys, tmp_path, install):
    install("amnesiac", "amnesiac-dist", FAILS_IN_LOAD_STATE, version="2.0")
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "-p", "amnesiac", "--out", str(tmp_path / "runs"))
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "runs" / "ring8-amnesiac-s0"), "--steps", "40", "-q")
    assert code == 2
    assert err == ("gancore: error: plugin amnesiac (amnesiac-dist 2.0) failed in gancore_load_state_dict: "
                   "AttributeError: 'Plugin' has no attribute 'count'\n")


KEEPS_AN_OBJECT = '''
    class Plugin:
        """Keeps a Python object in its state."""
        @hookimpl
        def gancore_state_dict(self):
            return {"notes": [1, 2, object()]}
'''


def test_a_state_a_checkpoint_cannot_hold_is_refused_before_training(capsys, tmp_path, install):
    install("hoarder", "hoarder-dist", KEEPS_AN_OBJECT)
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "-p", "hoarder", "--out", str(tmp_path / "runs"))
    assert code == 2
    assert err.startswith("gancore: error: plugin hoarder (hoarder-dist 1.0) returned a state that a checkpoint cannot hold "
                          "(state['notes'][2]: a builtins.object)")
    assert err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


QUIET = '''
    class Plugin:
        """Does nothing."""
        @hookimpl
        def gancore_step_end(self, step):
            pass
'''


def test_run_json_records_plugin_distributions_and_a_missing_one_says_what_to_install(capsys, tmp_path, install):
    install("quiet", "quiet-dist", QUIET, version="4.5.6")
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "-p", "quiet", "--out", str(tmp_path / "runs"))
    assert code == 0, err
    run = tmp_path / "runs" / "ring8-quiet-s0"
    assert json.loads((run / "run.json").read_text())["plugins"] == {"quiet": {"package": "quiet-dist", "version": "4.5.6"}}
    shutil.rmtree(tmp_path / "site")  # uninstall
    for argv in (["eval", str(run)], ["sample", str(run), "--out", str(tmp_path / "s.npy")], ["train", "--resume", str(run), "--steps", "50"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, argv
        assert err == f"gancore: error: run {run} uses plugin quiet, which is not installed: pip install 'quiet-dist==4.5.6'\n"
