"""Recipes: listing, showing, running with --recipe (precedence, recording), errors, and recipes
shipped by an outside distribution through the ``gancore.recipes`` entry-point group."""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch

import gancore
from cli_helpers import TINY_FLAGS, run_cli
from gancore.config import read_toml
from plugin_packages import fake_recipe_distribution

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BENCHMARK_FOUND = {"benchmark-vanilla", "ring8-best", "grid25-best", "hd1200-best", "feature-matching-ring8", "feature-matching-grid25",
                   "adagan-ring8", "adagan-grid25"}
PAPER = {"veegan-paper", "gan-veegan-table", "gan-veegan-table-alternating", "unrolled-paper", "wgan-gp-paper", "pacgan2-paper", "pacgan3-paper", "pacgan4-paper"}
BUILTIN = BENCHMARK_FOUND | PAPER
OUTSIDE = '''
    [recipe]
    description = "pacgan with packs of 3 on wide nets"
    source = "found by a test"
    datasets = ["ring8"]
    [train]
    g_width = 24
    lr_d = 3e-4
    [plugins.pacgan]
    m = 4
'''


@pytest.fixture
def ship(tmp_path, monkeypatch, request):
    """``ship(recipes, dist="outside-recipes")``: a distribution shipping ``{file: TOML}`` recipes, on sys.path
    (each test's package has its own name: an imported one stays in sys.modules)."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    counter = iter(range(100))

    def make(recipes: dict[str, str], dist: str = "outside-recipes", package: str | None = None) -> None:
        fake_recipe_distribution(folder, dist, "1.0", package or f"recipes_{abs(hash(request.node.nodeid))}_{next(counter)}", recipes)

    return make


def _config(out) -> dict:
    (run,) = out.iterdir()
    return tomllib.loads((run / "config.toml").read_text())


def test_the_builtin_recipes_are_listed_with_description_source_and_scores(capsys):
    code, out, err = run_cli(capsys, "recipes")
    assert code == 0 and not err
    names = {line.split()[0] for line in out.splitlines() if not line.startswith(" ")}
    assert names == BUILTIN
    assert "grid25-best  grid25's best row: pacgan (m = 2)" in out
    assert out.count("    source: found by the benchmark") == len(BENCHMARK_FOUND)
    assert out.count("    source: paper: ") == len(PAPER)
    assert "\n    measured on grid25: " in out  # gancore/recipes/scores.toml, which the benchmark's report writes


def test_a_score_line_gives_mean_and_spread_seeds_steps_cost_and_build():
    from gancore.recipes import score_line

    scores = {"n_modes": 25, "seeds": [0, 1, 2, 3, 4], "modes": 25.0, "modes_sd": 0.0, "hq_percent": 95.4, "hq_percent_sd": 0.42,
              "reverse_kl": 0.0081, "core_seconds_per_run": 2419.9, "steps": "12000", "build": "unknown build"}
    assert score_line(scores) == "25.0 ± 0.0/25 modes, 95.4 ± 0.4% HQ, KL 0.008 (5 seeds, 12000 steps, 40.3 core-min/run, unknown build)"


def test_a_recipe_the_benchmark_has_not_measured_says_so(capsys, ship):
    ship({"wide-pack.toml": OUTSIDE})
    code, out, _ = run_cli(capsys, "recipes", "wide-pack")
    assert code == 0 and out.splitlines()[-1] == "# measured on ring8: not measured by the mode benchmark"


def test_a_recipe_is_shown_in_full(capsys):
    code, out, _ = run_cli(capsys, "recipes", "grid25-best")
    assert code == 0
    shown = "\n".join(line for line in out.splitlines() if not line.startswith("# "))
    data = tomllib.loads(shown)
    assert data["train"]["loss"] == "hinge" and data["train"]["batch_size"] == 1024 and data["plugins"] == {"pacgan": {}}
    assert out.splitlines()[0] == "# grid25-best  (gancore: gancore:grid25-best.toml)"
    assert out.splitlines()[-1].startswith("# measured on grid25: ")


def test_every_builtin_recipe_resolves_and_sets_no_per_run_key(capsys):
    from gancore.manager import Catalog
    from gancore.recipes import RecipeBook, check_recipe

    book, catalog = RecipeBook.installed(), Catalog.installed()
    assert not book.warnings and not book.broken
    for recipe in book.recipes.values():
        check_recipe(recipe, catalog)
        assert not {"dataset", "data", "seed"} & set(recipe.train)
        assert recipe.description and recipe.source and recipe.datasets


def test_train_with_a_recipe_records_it_and_flags_beat_it(capsys, tmp_path):
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", "--recipe", "ring8-best", "--out", str(out), *TINY_FLAGS)
    assert code == 0, err
    config = _config(out)
    assert config["recipe"] == {"name": "ring8-best"}
    assert list(config["plugins"]) == ["pacgan"]
    assert config["train"]["g_depth"] == 4 and config["train"]["lr_d"] == 2e-3  # the recipe's
    assert config["train"]["steps"] == 30 and config["train"]["g_width"] == 16  # flag and --set over it
    (run,) = out.iterdir()
    assert json.loads((run / "run.json").read_text())["recipe"] == "ring8-best"


def test_a_recipe_taken_to_a_builtin_dataset_it_was_not_made_for_runs_with_a_warning(capsys, tmp_path):
    warning = ("gancore: warning: recipe ring8-best is made for ring8, not grid25: it runs unchanged, "
               "on settings chosen and measured elsewhere (UserWarning)\n")
    code, _, err = run_cli(capsys, "train", "--recipe", "ring8-best", "--dataset", "grid25", "--out", str(tmp_path / "a"), *TINY_FLAGS)
    assert code == 0 and err == warning
    assert _config(tmp_path / "a")["train"]["dataset"] == "grid25"
    code, _, err = run_cli(capsys, "train", "--recipe", "ring8-best", "--out", str(tmp_path / "b"), *TINY_FLAGS)
    assert code == 0 and not err  # ring8, its own
    points = tmp_path / "points.npy"
    np.save(points, np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32))
    code, _, err = run_cli(capsys, "train", "--recipe", "ring8-best", "--data", str(points), "--out", str(tmp_path / "c"), *TINY_FLAGS)
    assert code == 0 and not err  # the user's own data: theirs to judge
    tiny = dict(progress=False, steps=2, batch_size=32, device="cpu", z_dim=4, g_width=16, d_width=16, eval_samples=400)
    with pytest.warns(UserWarning, match="recipe ring8-best is made for ring8, not grid25"):
        gancore.fit(recipe="ring8-best", dataset="grid25", n_train=500, **tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # points given to gancore.fit: the user's own data, no warning
        gancore.fit(data=torch.randn(500, 2), recipe="ring8-best", **tiny)


def test_a_recipe_beats_a_plugin_suggestion_and_a_config_file_beats_the_recipe(capsys, tmp_path):
    """wgan suggests its own loss and learning rates; the recipe's explicit values win, the config file's win over both."""
    config_file = tmp_path / "over.toml"
    config_file.write_text('[train]\nlr_g = 7e-4\n[plugins.wgan]\n')
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", "--recipe", "benchmark-vanilla", "--config", str(config_file), "--out", str(out), *TINY_FLAGS)
    assert code == 0, err
    train = _config(out)["train"]
    assert train["lr_d"] == 2e-3 and train["betas_d"] == [0.5, 0.9]  # the recipe's, over wgan's suggestion
    assert train["lr_g"] == 7e-4  # the config file's, over the recipe's 2e-3
    assert train["loss"] == "wasserstein"  # wgan's suggestion where the recipe is silent


def test_a_plugin_flag_adds_plugins_after_the_recipes_own(capsys, tmp_path):
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", "--recipe", "ring8-best", "--plugin", "ema", "--out", str(out), *TINY_FLAGS)
    assert code == 0, err
    assert list(_config(out)["plugins"]) == ["pacgan", "ema"]


def test_a_runs_config_toml_given_to_config_starts_from_its_recipe_again(capsys, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert run_cli(capsys, "train", "--recipe", "ring8-best", "--out", str(first), *TINY_FLAGS)[0] == 0
    (run,) = first.iterdir()
    code, _, err = run_cli(capsys, "train", "--config", str(run / "config.toml"), "--out", str(second), "-q")
    assert code == 0, err
    assert _config(second) == _config(first)
    code, _, err = run_cli(capsys, "train", "--config", str(run / "config.toml"), "--recipe", "grid25-best", "--out", str(second), "-q")
    assert code == 2 and "--recipe grid25-best and the config file's [recipe] name = 'ring8-best' disagree" in err


def test_an_unknown_recipe_lists_the_available_ones(capsys, tmp_path):
    for argv in (["recipes", "ring9-best"], ["train", "--recipe", "ring9-best", "--out", str(tmp_path)]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and not out
        assert err == f"gancore: error: unknown recipe 'ring9-best' (available: {', '.join(sorted(BUILTIN))}); see `gancore recipes`\n"
    assert not any(tmp_path.iterdir())


def test_an_outside_distribution_ships_a_recipe_that_lists_and_trains(capsys, tmp_path, ship):
    ship({"wide-pack.toml": OUTSIDE})
    code, out, err = run_cli(capsys, "recipes")
    assert code == 0 and not err
    assert "wide-pack  (outside-recipes 1.0)  pacgan with packs of 3 on wide nets" in out
    out_dir = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", "--recipe", "wide-pack", "--out", str(out_dir), "--steps", "30", "--batch-size", "32", "-q", "--device", "cpu")
    assert code == 0, err
    config = _config(out_dir)
    assert config["recipe"] == {"name": "wide-pack"} and config["plugins"] == {"pacgan": {"m": 4}}
    assert config["train"]["g_width"] == 24 and config["train"]["lr_d"] == 3e-4


@pytest.mark.parametrize(
    "body, message",
    [
        ("[train]\nsteps = 10\nseed = 3\n", "train.seed is chosen per run, not by a recipe; remove it"),
        ("[train]\ndataset = \"grid25\"\n", "train.dataset is chosen per run, not by a recipe; remove it"),
        ("[train]\nsteps = 10\n[extra]\n", "unknown table [extra]"),
        ("[plugins]\npacgan = 2\n", "plugins.pacgan must be a table [plugins.pacgan] of its options"),
        ("[train\n", "is not valid TOML"),
    ],
)
def test_a_malformed_outside_recipe_is_skipped_with_a_warning_naming_file_and_key(capsys, tmp_path, ship, body, message):
    header = '[recipe]\ndescription = "d"\nsource = "s"\n'
    ship({"bad.toml": header + body, "wide-pack.toml": OUTSIDE})
    code, out, err = run_cli(capsys, "recipes")
    assert code == 0 and "wide-pack  (outside-recipes 1.0)" in out
    (warning,) = err.splitlines()
    assert warning.startswith("gancore: warning: recipe file outside-recipes 1.0:bad.toml") and message in warning and warning.endswith("; it is skipped")
    code, _, err = run_cli(capsys, "train", "--recipe", "bad", "--out", str(tmp_path / "runs"))
    assert code == 2 and err.splitlines()[-1].startswith("gancore: error: recipe bad cannot be used: recipe file outside-recipes 1.0:bad.toml")


@pytest.mark.parametrize(
    "train, message",
    [
        ("stepz = 10", "unknown option train.stepz"),
        ("steps = \"many\"", "train.steps='many': expected int"),
    ],
)
def test_a_recipe_with_an_unknown_option_or_a_wrong_type_fails_naming_file_and_key(capsys, tmp_path, ship, train, message):
    ship({"typo.toml": f'[recipe]\ndescription = "d"\nsource = "s"\n[train]\n{train}\n'})
    code, out, err = run_cli(capsys, "train", "--recipe", "typo", "--out", str(tmp_path / "runs"))
    assert code == 2 and not out
    assert err.startswith("gancore: error: recipe file outside-recipes 1.0:typo.toml: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_an_unknown_plugin_in_a_recipe_names_file_and_plugin(capsys, tmp_path, ship):
    ship({"ghost.toml": '[recipe]\ndescription = "d"\nsource = "s"\n[plugins.ghost]\n'})
    code, _, err = run_cli(capsys, "train", "--recipe", "ghost", "--out", str(tmp_path / "runs"))
    assert code == 2 and err.startswith("gancore: error: recipe file outside-recipes 1.0:ghost.toml: unknown plugin 'ghost'")


def test_an_outside_recipe_cannot_take_a_builtin_name(capsys, ship):
    ship({"ring8-best.toml": OUTSIDE})
    code, out, err = run_cli(capsys, "recipes", "ring8-best")
    assert code == 0 and "(gancore: gancore:ring8-best.toml)" in out
    assert err == "gancore: warning: recipe ring8-best of outside-recipes 1.0 is skipped: gancore ships a recipe of that name already\n"


def test_a_recipe_package_that_cannot_be_imported_is_skipped_with_a_warning(capsys, tmp_path, ship):
    ship({"wide-pack.toml": OUTSIDE}, package="broken_recipes_package")
    (tmp_path / "site" / "broken_recipes_package" / "__init__.py").write_text("raise ImportError('half-installed')\n")
    code, out, err = run_cli(capsys, "recipes")
    assert code == 0 and set(line.split()[0] for line in out.splitlines() if not line.startswith(" ")) == BUILTIN
    assert err == (
        "gancore: warning: recipes of outside-recipes 1.0 (broken_recipes_package) cannot be read: ImportError: half-installed; they are skipped\n"
    )


def test_a_config_file_recipe_table_must_hold_one_name(tmp_path):
    from gancore.errors import GancoreError

    path = tmp_path / "c.toml"
    path.write_text('[recipe]\nname = "ring8-best"\nsteps = 3\n')
    with pytest.raises(GancoreError, match=r"\[recipe\] holds one key, name = \"RECIPE\""):
        read_toml(path)


def _first_linear(module):
    return next(m for m in module.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("name", sorted(PAPER))
def test_every_paper_recipe_names_paper_and_official_code_and_builds_on_its_datasets(name):
    """A paper recipe cites the paper (and table) and the official code, and a trainer builds from it, unchanged
    but for the per-run dataset, on each dataset it lists: the plugins' own checks (pack size against the batch,
    extra noise against z_dim) and the model checks pass."""
    from gancore.manager import Catalog
    from gancore.recipes import RecipeBook
    from gancore.trainer import Trainer

    recipe, catalog = RecipeBook.installed().get(name), Catalog.installed()
    assert recipe.source.startswith("paper: ") and "Table" in recipe.source and "code: " in recipe.source
    assert recipe.datasets and set(recipe.datasets) <= {"ring8", "grid25", "hd1200"}
    for dataset in recipe.datasets:
        enabled, values = recipe.layers()
        values["train"].update(dataset=dataset, n_train=600, device="cpu")
        trainer = Trainer(catalog.resolve(enabled, values), progress=False)
        dim = trainer.dataset.dim
        if name == "veegan-paper":  # 254 reconstructed noise values + 1 eps; the critic reads (z[:254], x)
            assert _first_linear(trainer.models.G).in_features == 255
            assert trainer.models["F"].net[-1].out_features == 254
            assert _first_linear(trainer.models.D).in_features == 254 + dim
        if name.startswith("pacgan"):  # D's width stays 200 whatever m; its input reads m samples
            m = int(name[len("pacgan")])
            assert trainer.train.batch_size == 100 * m and _first_linear(trainer.models.D).in_features == m * dim
