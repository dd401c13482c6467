"""Mamba ops as ``torch.library`` custom ops in the ``mamba_compile`` namespace.

Importing this package registers ``torch.ops.mamba_compile.*``; nothing else happens at import
(no CUDA initialisation, no triton import: kernel modules load on the first CUDA call).
"""

from .add_matmul import add_matmul, add_matmul_, matmul_into_
from .causal_conv1d import causal_conv1d, causal_conv1d_update
from .cross_entropy import linear_cross_entropy
from .decode_linear import decode_linear
from .mamba1_decode import decode_in, decode_norm_head, decode_norm_in, mamba1_decode_in, mamba1_decode_ssm
from .mamba2_decode import mamba2_decode_ssm, mamba2_decode_ssm_gated
from .norms import layer_norm, rms_norm, rms_norm_gated
from .selective_scan import selective_scan
from .selective_state_update import selective_state_update
from .ssd import ssd_chunk_scan

__all__ = [
    "add_matmul",
    "add_matmul_",
    "causal_conv1d",
    "causal_conv1d_update",
    "layer_norm",
    "linear_cross_entropy",
    "decode_in",
    "decode_linear",
    "decode_norm_head",
    "decode_norm_in",
    "mamba1_decode_in",
    "mamba1_decode_ssm",
    "mamba2_decode_ssm",
    "mamba2_decode_ssm_gated",
    "matmul_into_",
    "rms_norm",
    "rms_norm_gated",
    "selective_scan",
    "selective_state_update",
    "ssd_chunk_scan",
]
