"""Public ops: validation, backend choice, autograd and fake registrations."""
from arkernels.ops.linear_scan import linear_scan
from arkernels.ops.selective_state_update import selective_state_update, selective_state_update_tokens

__all__ = ["linear_scan"]
__all__ += ["selective_state_update", "selective_state_update_tokens"]
