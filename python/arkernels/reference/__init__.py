"""Pure-PyTorch definitions of every arkernels op (float32 math; float64 when given float64)."""
from arkernels.reference.linear_scan import linear_scan_ref, linear_scan_ref_logdepth
from arkernels.reference.selective_state_update import selective_state_update_ref, selective_state_update_tokens_ref

__all__ = ["linear_scan_ref", "linear_scan_ref_logdepth"]
__all__ += ["selective_state_update_ref", "selective_state_update_tokens_ref"]
