"""Temporal-shuffle clips (Knowledge-Spreader's perturbation-aware pseudo-labelling).

A small classifier learns whether a clip's frames are in their real order. Its training clips,
built here in one fused pass, are the real clips and one shuffled copy of each, from per-frame
features: Knowledge-Spreader shuffles the inputs of its per-position students (p_a) and runs
every student at its own position on both copies (see aubench.models.knowledge_spreader).
`make_shuffle_permutations` draws the shuffles (never the identity, so every shuffled clip really
is out of order) from a torch.Generator, outside the kernel.
"""
import torch

from aubench.ops import reference
from aubench.ops._checks import check_distinct_in_range, check_features, check_index, use_kernels
from aubench.ops._extension import have_extension


def temporal_shuffle_features(
    features: torch.Tensor, perm: torch.Tensor, validate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The real clips and their shuffled copies, and their labels.

    features: (B, N, C) float16/bfloat16/float32/float64 per-frame clip features. perm: (B, N)
    int64 (or int32), each row a permutation of 0..N-1; use `make_shuffle_permutations`, whose
    rows are never the identity.
    Returns clips (2B, N, C): rows 0..B-1 the features as they are, row B + b clip b shuffled
    (its frame t is features[b, perm[b, t]]); and labels (2B,) in features' dtype (1 = real
    order, 0 = shuffled). Differentiable with respect to features.
    validate=True checks that every row of perm is a permutation (one sort and one device
    sync; ValueError naming the row otherwise). validate=False skips that check, for hot loops
    whose perm comes from `make_shuffle_permutations`; shapes, dtypes and devices are always
    checked. A row that is not a permutation is then computed exactly by the formula above
    (shuffled frames repeat or go missing; each frame's gradient sums every position that holds
    it). An out-of-range value raises RuntimeError on the CPU, and on CUDA stops the kernel with
    a device-side assert (the CUDA context is then unusable, as with torch's index ops); no
    kernel reads or writes outside its tensors, or returns unwritten memory.
    """
    check_features(features, "features", 3)
    batch, frames, _ = features.shape
    check_index(perm, "perm", (batch, frames), features.device)
    if validate:
        check_distinct_in_range(perm, "perm", frames)
    if not use_kernels(features):
        return reference.temporal_shuffle_features(features, perm)
    clips = torch.ops.aubench.temporal_shuffle_features(features, perm)
    labels = torch.cat([features.new_ones(batch), features.new_zeros(batch)])
    return clips, labels


def make_shuffle_permutations(
    batch: int, n: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """(batch, n) int64: each row a permutation of 0..n-1 drawn uniformly among the n! - 1
    that are not the identity (rejection sampling: identity rows are redrawn).

    Drawn on the generator's device (or `device` without a generator), returned on `device`.
    """
    if not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch must be a non-negative int, got {batch!r}")
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (one frame cannot be shuffled), got {n!r}")
    draw_device = generator.device if generator is not None else device
    identity = torch.arange(n, device=draw_device)
    perm = torch.rand(batch, n, generator=generator, device=draw_device).argsort(dim=1)
    redraw = (perm == identity).all(dim=1)
    while bool(redraw.any()):
        rows = redraw.nonzero().squeeze(1)
        fresh = torch.rand(len(rows), n, generator=generator, device=draw_device).argsort(dim=1)
        perm[rows] = fresh
        redraw[rows] = (fresh == identity).all(dim=1)
    return perm.to(device) if device is not None else perm


def _register() -> None:
    """Fake kernels and autograd formulas for torch.ops.aubench's temporal-shuffle ops."""
    ops = torch.ops.aubench

    @torch.library.register_fake("aubench::temporal_shuffle_features")
    def _(features, perm):
        torch._check(features.dim() == 3 and perm.shape == features.shape[:2])
        batch, frames, channels = features.shape
        return features.new_empty(2 * batch, frames, channels)

    @torch.library.register_fake("aubench::temporal_shuffle_features_backward")
    def _(grad, perm):
        torch._check(grad.dim() == 3 and grad.shape[0] == 2 * perm.shape[0])
        return grad.new_empty(grad.shape[0] // 2, grad.shape[1], grad.shape[2])

    def save_perm(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    # The op is linear in features and its backward is its adjoint, so each is the other's
    # backward (double backward for free).
    def backward(ctx, grad):
        (perm,) = ctx.saved_tensors
        return ops.temporal_shuffle_features_backward(grad, perm), None

    def backward_backward(ctx, grad):
        (perm,) = ctx.saved_tensors
        return ops.temporal_shuffle_features(grad, perm), None

    torch.library.register_autograd("aubench::temporal_shuffle_features", backward,
                                    setup_context=save_perm)
    torch.library.register_autograd("aubench::temporal_shuffle_features_backward",
                                    backward_backward, setup_context=save_perm)


if have_extension():
    _register()
