"""aubench's fused custom ops (see csrc/ and README "Custom ops").

Each op module exposes a public function that validates its inputs, then dispatches to the
compiled kernel (torch.ops.aubench.*) or, when the extension is not built, to the reference.
"""
from aubench.ops._extension import have_cuda_kernels, have_extension
from aubench.ops.masking import block_masking, random_masking
from aubench.ops.sinkhorn import SinkhornConvergenceWarning, SinkhornInfo, eps_range, sinkhorn
from aubench.ops.temporal_shuffle import make_shuffle_permutations, temporal_shuffle_features
from aubench.ops.token_gather import gather_tokens, restore_tokens

__all__ = [
    "have_extension",
    "have_cuda_kernels",
    # batched log-domain Sinkhorn
    "sinkhorn",
    "SinkhornInfo",
    "SinkhornConvergenceWarning",
    "eps_range",
    # temporal-shuffle classifier features
    "temporal_shuffle_features",
    "make_shuffle_permutations",
    # masked-token gather / restore and mask makers
    "gather_tokens",
    "restore_tokens",
    "random_masking",
    "block_masking",
]
