"""Suite-wide settings. Hypothesis runs derandomized (the same examples on every machine, so CI never
meets a new failing example by chance) without per-example deadlines (the CI machine is shared)."""

from hypothesis import settings

settings.register_profile("medflow", derandomize=True, deadline=None, max_examples=60, print_blob=True)
settings.load_profile("medflow")
