"""Third-party plugins for the parallel tests: one that declares nothing, one that declares "local"."""
from gancore import hookimpl


class CountsSteps:
    """Counts the steps it saw (any per-rank state a checkpoint from rank 0 would lose)."""

    def __init__(self) -> None:
        self.steps = 0

    @hookimpl
    def gancore_step_end(self, trainer):
        self.steps += 1


class DeclaredCountsSteps(CountsSteps):
    data_parallel = ("local", "every rank counts the same steps")
