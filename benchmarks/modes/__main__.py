"""``python -m benchmarks.modes``: see the package's docstring."""
import sys

from benchmarks.modes.command import main

sys.exit(main())
