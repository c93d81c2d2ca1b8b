"""``python -m gancore.cli``: the ``gancore`` command, for launchers that start a module
(``torchrun --nproc-per-node N -m gancore.cli train ...``)."""
from gancore.cli.main import main

main()
