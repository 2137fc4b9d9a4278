"""Public ops: validation, backend choice, autograd and fake registrations."""
from arkernels.ops.linear_scan import linear_scan
from arkernels.ops.ssd_chunk_scan import ssd_chunk_scan

__all__ = ["linear_scan", "ssd_chunk_scan"]
