"""Helpers shared by the tests and benchmarks: numerics checks, poisoned outputs, random inputs."""
from arkernels.testing.numerics import assert_close_to_reference, max_abs_error, poison_, relative_error

__all__ = ["assert_close_to_reference", "max_abs_error", "poison_", "relative_error"]
