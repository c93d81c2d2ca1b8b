"""A plugin that fails inside a hook (its own module, as a third-party plugin would be)."""
from gancore import hookimpl


class Faulty:
    """Raises at the third step end."""

    @hookimpl
    def gancore_step_end(self, step):
        if step == 2:
            raise ValueError("the flux capacitor is empty")
