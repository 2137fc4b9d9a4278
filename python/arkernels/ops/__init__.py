"""Public ops: validation, backend choice, autograd and fake registrations."""
from arkernels.ops.block_sparse_attention import block_sparse_attention
from arkernels.ops.causal_conv1d import causal_conv1d, causal_conv1d_update
from arkernels.ops.decode_attention import decode_attention
from arkernels.ops.linear_scan import linear_scan
from arkernels.ops.selective_scan import selective_scan
from arkernels.ops.selective_state_update import selective_state_update, selective_state_update_tokens
from arkernels.ops.ssd_chunk_scan import ssd_chunk_scan

__all__ = ["block_sparse_attention", "decode_attention", "linear_scan", "ssd_chunk_scan", "selective_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update", "selective_state_update_tokens"]
