from gancore.cli.main import main

TINY_FLAGS = ["--steps", "30", "--batch-size", "32", "-q", "--device", "cpu",
              "--set", "train.z_dim=4", "--set", "train.g_width=16", "--set", "train.d_width=16",
              "--set", "train.n_train=500", "--set", "train.eval_samples=400"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the console script in-process; return (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err
