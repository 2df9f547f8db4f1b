"""aubench's fused custom ops (see csrc/ and README "Custom ops").

Each op module exposes a public function that validates its inputs, then dispatches to the
compiled kernel (torch.ops.aubench.*) or, when the extension is not built, to the reference.
"""
from aubench.ops._extension import have_cuda_kernels, have_extension
from aubench.ops.sinkhorn import sinkhorn

__all__ = ["have_extension", "have_cuda_kernels", "sinkhorn"]
