"""Masked-token patch gather / restore for an MAE-style encoder and decoder.

`gather_tokens(x, ids_keep)` keeps the visible tokens (the encoder's input) and
`restore_tokens(x_vis, ids_restore, mask_token)` puts them back in place with the mask token
everywhere else (the decoder's input): exactly the official MAE's
`torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))` and its cat-then-gather unshuffle,
as one fused row copy each. Both are differentiable with respect to the features and the mask
token; the backward passes are custom ops too (and differentiable again: each op's backward is
the other op). Index tensors come from `aubench.ops.masking` (random or block masks).

The rows of ids_keep need not be sorted: token k of the output is x[b, ids_keep[b, k]].
"""
import torch

from aubench.ops import reference
from aubench.ops._checks import check_distinct_in_range, check_features, check_index, use_kernels
from aubench.ops._extension import have_extension


def gather_tokens(x: torch.Tensor, ids_keep: torch.Tensor, validate: bool = True) -> torch.Tensor:
    """Visible tokens: out[b, k] = x[b, ids_keep[b, k]].

    x: (B, L, D) float16/bfloat16/float32/float64. ids_keep: (B, K) int64 (or int32), K <= L,
    each row distinct positions in [0, L), in any order. Returns (B, K, D).

    validate=True checks the index values (one sort and one device sync): a repeated or
    out-of-range position raises ValueError naming the row. validate=False skips only that
    check, for hot loops whose indices come from `random_masking` / `block_masking`; shapes,
    dtypes and devices are always checked. Without it:
    - repeated positions are computed exactly, as torch.gather does: the token is copied to
      each place, and its gradient is the sum over them (rows never kept get zero);
    - an out-of-range position raises RuntimeError on the CPU, and on CUDA stops the kernel
      with a device-side assert (which, as with torch's own index ops, leaves the CUDA context
      unusable). No kernel reads or writes outside its tensors, or returns unwritten memory.
    """
    check_features(x, "x", 3)
    check_index(ids_keep, "ids_keep", (x.shape[0], None), x.device)
    length, num_keep = x.shape[1], ids_keep.shape[1]
    if num_keep > length:
        raise ValueError(f"ids_keep keeps {num_keep} tokens but x has only {length}")
    if validate:
        check_distinct_in_range(ids_keep, "ids_keep", length)
    if use_kernels(x):
        return torch.ops.aubench.gather_tokens(x, ids_keep)
    return reference.gather_tokens(x, ids_keep)


def restore_tokens(
    x_vis: torch.Tensor,
    ids_restore: torch.Tensor,
    mask_token: torch.Tensor,
    validate: bool = True,
) -> torch.Tensor:
    """All tokens back in place: out[b, l] = x_vis[b, ids_restore[b, l]] when
    ids_restore[b, l] < K, else mask_token.

    x_vis: (B, K, D). ids_restore: (B, L) int64 (or int32), each row a permutation of 0..L-1
    (as returned by the mask makers), K <= L. mask_token: (D,) or (1, 1, D) (an MAE
    `nn.Parameter`), same dtype and device as x_vis. Returns (B, L, D).

    validate=False skips the permutation check (see `gather_tokens`). A row that repeats or
    misses values is then computed exactly by the formula above: a visible token may be placed
    several times (its gradient sums them) or never (zero gradient), and the mask token's
    gradient sums every position holding a value >= K. Out-of-range values: as in
    `gather_tokens`.
    """
    check_features(x_vis, "x_vis", 3)
    batch, num_keep, dim = x_vis.shape
    check_index(ids_restore, "ids_restore", (batch, None), x_vis.device)
    length = ids_restore.shape[1]
    if num_keep > length:
        raise ValueError(f"x_vis has {num_keep} tokens, more than the {length} of ids_restore")
    if not isinstance(mask_token, torch.Tensor):
        raise TypeError(f"mask_token must be a torch.Tensor, got {type(mask_token).__name__}")
    if tuple(mask_token.shape) not in ((dim,), (1, 1, dim)):
        raise ValueError(f"mask_token must have shape ({dim},) or (1, 1, {dim}), "
                         f"got {tuple(mask_token.shape)}")
    if mask_token.dtype != x_vis.dtype:
        raise TypeError(f"mask_token is {mask_token.dtype} but x_vis is {x_vis.dtype}")
    if mask_token.device != x_vis.device:
        raise ValueError(f"mask_token is on {mask_token.device} but x_vis is on {x_vis.device}")
    if validate:
        check_distinct_in_range(ids_restore, "ids_restore", length)
    mask_token = mask_token.reshape(dim)
    if use_kernels(x_vis):
        return torch.ops.aubench.restore_tokens(x_vis, ids_restore, mask_token)
    return reference.restore_tokens(x_vis, ids_restore, mask_token)


def _register() -> None:
    """Fake kernels and autograd formulas for torch.ops.aubench's token ops."""
    ops = torch.ops.aubench

    @torch.library.register_fake("aubench::gather_tokens")
    def _(x, ids_keep):
        torch._check(x.dim() == 3 and ids_keep.dim() == 2 and ids_keep.shape[0] == x.shape[0])
        return x.new_empty(x.shape[0], ids_keep.shape[1], x.shape[2])

    @torch.library.register_fake("aubench::gather_tokens_backward")
    def _(grad, ids_keep, length):
        torch._check(grad.dim() == 3 and ids_keep.shape == grad.shape[:2])
        return grad.new_empty(grad.shape[0], length, grad.shape[2])

    @torch.library.register_fake("aubench::restore_tokens")
    def _(x_vis, ids_restore, mask_token):
        torch._check(x_vis.dim() == 3 and ids_restore.dim() == 2)
        torch._check(mask_token.shape == (x_vis.shape[2],))
        return x_vis.new_empty(x_vis.shape[0], ids_restore.shape[1], x_vis.shape[2])

    @torch.library.register_fake("aubench::restore_tokens_backward")
    def _(grad, ids_restore, num_keep):
        torch._check(grad.dim() == 3 and ids_restore.shape == grad.shape[:2])
        return grad.new_empty(grad.shape[0], num_keep, grad.shape[2]), grad.new_empty(grad.shape[2])

    # gather and restore are adjoint row shuffles, so each backward is the other op's shape.
    def save_index(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.first_shape = inputs[0].shape

    def gather_backward(ctx, grad):
        (ids_keep,) = ctx.saved_tensors
        return ops.gather_tokens_backward(grad, ids_keep, ctx.first_shape[1]), None

    def gather_backward_backward(ctx, grad):
        (ids_keep,) = ctx.saved_tensors
        return ops.gather_tokens(grad, ids_keep), None, None

    def restore_backward(ctx, grad):
        (ids_restore,) = ctx.saved_tensors
        grad_x_vis, grad_mask_token = ops.restore_tokens_backward(
            grad, ids_restore, ctx.first_shape[1]
        )
        return grad_x_vis, None, grad_mask_token

    def restore_backward_backward(ctx, grad_x_vis, grad_mask_token):
        (ids_restore,) = ctx.saved_tensors
        batch, _, dim = ctx.first_shape
        like = dict(dtype=ctx.dtype, device=ids_restore.device)
        if grad_x_vis is None:
            grad_x_vis = torch.zeros(batch, ctx.num_keep, dim, **like)
        if grad_mask_token is None:
            grad_mask_token = torch.zeros(dim, **like)
        return ops.restore_tokens(grad_x_vis, ids_restore, grad_mask_token), None, None

    def save_restore_backward(ctx, inputs, output):
        save_index(ctx, inputs, output)
        ctx.num_keep, ctx.dtype = inputs[2], inputs[0].dtype

    torch.library.register_autograd("aubench::gather_tokens", gather_backward,
                                    setup_context=save_index)
    torch.library.register_autograd("aubench::gather_tokens_backward", gather_backward_backward,
                                    setup_context=save_index)
    torch.library.register_autograd("aubench::restore_tokens", restore_backward,
                                    setup_context=save_index)
    torch.library.register_autograd("aubench::restore_tokens_backward",
                                    restore_backward_backward,
                                    setup_context=save_restore_backward)


if have_extension():
    _register()
