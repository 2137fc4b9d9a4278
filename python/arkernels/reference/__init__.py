"""Pure-PyTorch definitions of every arkernels op (float32 math; float64 when given float64)."""
from arkernels.reference.linear_scan import linear_scan_ref, linear_scan_ref_logdepth
from arkernels.reference.ssd_chunk_scan import ssd_chunk_scan_chunked_ref, ssd_chunk_scan_ref

__all__ = ["linear_scan_ref", "linear_scan_ref_logdepth", "ssd_chunk_scan_chunked_ref", "ssd_chunk_scan_ref"]
