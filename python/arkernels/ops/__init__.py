"""Public ops: validation, backend choice, autograd and fake registrations."""
from arkernels.ops.linear_scan import linear_scan

__all__ = ["linear_scan"]
