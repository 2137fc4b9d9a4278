"""Pure-PyTorch definitions of every arkernels op (float32 math; float64 when given float64)."""
from arkernels.reference.block_sparse_attention import block_sparse_attention_ref
from arkernels.reference.decode_attention import decode_attention_ref
from arkernels.reference.causal_conv1d import causal_conv1d_ref, causal_conv1d_update_ref
from arkernels.reference.linear_scan import linear_scan_ref, linear_scan_ref_logdepth
from arkernels.reference.selective_scan import selective_scan_ref
from arkernels.reference.selective_state_update import selective_state_update_ref, selective_state_update_tokens_ref
from arkernels.reference.ssd_chunk_scan import ssd_chunk_scan_chunked_ref, ssd_chunk_scan_ref

__all__ = ["block_sparse_attention_ref", "decode_attention_ref", "ssd_chunk_scan_chunked_ref", "ssd_chunk_scan_ref", "linear_scan_ref", "linear_scan_ref_logdepth", "selective_scan_ref", "causal_conv1d_ref", "causal_conv1d_update_ref", "selective_state_update_ref", "selective_state_update_tokens_ref"]
