"""Loads the compiled ops (aubench._C) once, and says clearly when they are missing.

Every op module asks `have_extension()` before dispatching to torch.ops.aubench; without the
extension the pure-PyTorch versions in aubench/ops/reference.py run instead, after one warning.
"""
import warnings

import torch  # noqa: F401  (aubench._C links against libtorch, which must be loaded first)

_loaded = None  # None: not tried yet; True / False afterwards
_load_error = ""


def have_extension() -> bool:
    global _loaded, _load_error
    if _loaded is None:
        try:
            import aubench._C  # noqa: F401  (registers torch.ops.aubench.*)

            _loaded = True
        except ImportError as error:
            _loaded = False
            _load_error = str(error)
            warnings.warn(
                "aubench._C (the compiled custom ops) could not be loaded "
                f"({_load_error}); using the slower pure-PyTorch reference ops instead. "
                "Build it with `pip install --no-build-isolation -e .`.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _loaded


def have_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA kernels."""
    if not have_extension():
        return False
    import aubench._C as C

    return bool(getattr(C, "WITH_CUDA", False))
