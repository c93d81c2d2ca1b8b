import pytest

from gancore.config import core_options
from gancore.errors import GancoreError
from gancore.options import OptionSet, parse_assignments


@pytest.fixture
def options():
    declared = OptionSet("demo")
    declared.add("rate", float, 0.1, "a rate", min=0)
    declared.add("count", int, 3, "a count", min=1)
    declared.add("on", bool, False, "a switch")
    declared.add("mode", str, "a", "a choice", choices=("a", "b"))
    declared.add("betas", "floats", (0.5, 0.9), "two numbers")
    return declared


def test_defaults_and_conversions(options):
    assert vars(options.resolve({})) == {"rate": 0.1, "count": 3, "on": False, "mode": "a", "betas": (0.5, 0.9)}
    resolved = options.resolve({"rate": "2e-4", "count": "7", "on": "yes", "mode": "b", "betas": "0.0,0.99"})
    assert vars(resolved) == {"rate": 2e-4, "count": 7, "on": True, "mode": "b", "betas": (0.0, 0.99)}
    # TOML gives typed values
    assert options.resolve({"count": 4, "on": True, "betas": [0.1, 0.2]}).betas == (0.1, 0.2)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rate": "fast"}, r"demo.rate='fast': expected"),
        ({"rate": "nan"}, "finite"),
        ({"count": "1.5"}, "demo.count='1.5'"),
        ({"count": True}, "expected an integer"),
        ({"count": 0}, "at least 1"),
        ({"on": "maybe"}, "true or false"),
        ({"mode": "c"}, "choose one of a, b"),
        ({"rate": -1.0}, "at least 0"),
        ({"speed": 1}, r"unknown option demo.speed \(options of demo: betas, count, mode, on, rate\)"),
    ],
)
def test_bad_values_are_one_line_errors(options, values, message):
    with pytest.raises(GancoreError, match=message) as error:
        options.resolve(values)
    assert "\n" not in str(error.value)


def test_parse_assignments():
    assert parse_assignments(["train.lr_d=2e-4", "instance-noise.std = 0.3", "train.steps=5"]) == {
        "train": {"lr_d": "2e-4", "steps": "5"},
        "instance-noise": {"std": "0.3"},
    }
    for bad in ("lr_d=2e-4", "train.lr_d", ".x=1", "train.=1"):
        with pytest.raises(GancoreError, match="NAME.OPTION=VALUE"):
            parse_assignments([bad])


def test_declaring_an_option_twice_is_an_error(options):
    with pytest.raises(GancoreError, match="twice"):
        options.add("rate", float, 1.0, "again")


def test_core_defaults_follow_the_unrolled_gan_ring_setup():
    train = core_options().resolve({})
    assert (train.z_dim, train.g_width, train.g_depth, train.batch_size) == (256, 128, 2, 512)
    assert (train.lr_d, train.lr_g, train.betas_d[0]) == (1e-4, 1e-3, 0.5)
    assert train.eval_samples == 0  # the dataset protocol's count
