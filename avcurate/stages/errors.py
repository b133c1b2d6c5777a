"""The error every stage-level failure is raised as, apart from `base` so that the stage
context (which `base` imports) can raise it too."""


class StageError(Exception):
    """A stage cannot be built or run as configured (bad option, missing column)."""
