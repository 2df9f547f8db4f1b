"""Batched log-domain Sinkhorn for many small entropic optimal-transport problems at once.

RRL's AU relation loss solves one K x K problem per sample (cost 1 - co-occurrence, marginals
from prediction/target similarities); this op solves the whole batch in one kernel call
(csrc/sinkhorn: C++ parallel over the batch on the CPU, one CUDA thread block per problem on
the GPU) and differentiates it exactly (sinkhorn_backward, the adjoint of the iterations).
"""
import math
import numbers
import warnings
from typing import NamedTuple

import torch

from aubench.ops import reference
from aubench.ops._extension import have_cuda_kernels, have_extension

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_registered = False
_warned_no_cuda_kernels = False


class SinkhornInfo(NamedTuple):
    """What `sinkhorn(..., return_info=True)` reports per problem."""

    iterations: torch.Tensor  # (B,) int64: Sinkhorn iterations run (0: all-zero problem)
    marginal_error: torch.Tensor  # (B,): L1 error of the plan's row sums against a / sum(a)


class SinkhornConvergenceWarning(UserWarning):
    """Some problems of a `sinkhorn` call ran max_iter iterations and still missed tol."""


def sinkhorn(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float = 0.05,
    max_iter: int = 100,
    tol: float = 1e-6,
    return_info: bool = False,
):
    """Entropic OT plans of a batch of K x K problems, by log-domain Sinkhorn iterations.

    Solves, for each problem p of the batch,
        plan_p = argmin_P <P, C_p> + eps * sum_ij P_ij (log P_ij - 1)
                 subject to P 1 = a_p / sum(a_p), P^T 1 = b_p / sum(b_p), P >= 0.

    Args:
        cost: (B, K, K) costs, or (K, K) shared by every problem of the batch. Finite.
        a: (B, K) non-negative row marginals (source masses).
        b: (B, K) non-negative column marginals (target masses).
        eps: entropic regularisation, > 0 (the same scale as the cost; POT's `reg`), within
            the range the compute dtype can run at (`eps_range`, else ValueError).
        max_iter: most Sinkhorn iterations (one iteration = one f and one g update), >= 1.
        tol: a problem stops once the L1 error of its plan's row sums against a / sum(a) is
            below tol (columns are exact after each iteration); tol = 0 runs exactly
            max_iter iterations. Each problem stops on its own.
        return_info: also return a `SinkhornInfo` (iterations and marginal error per
            problem).

    Returns:
        plan (B, K, K) in the dtype of the inputs; with return_info, (plan, SinkhornInfo).

    Guarantees and reports:
        - Every plan is finite and non-negative; its columns sum to b / sum(b), so it sums to
          1 (to rounding); its rows sum to a / sum(a) up to `marginal_error` (L1), measured
          on the returned plan. Entries with zero mass get zero rows (a_i = 0) or columns
          (b_j = 0); a problem whose a or b is all zero gets an all-zero plan (0 iterations,
          error 0).
        - When tol > 0 and some problem ran all max_iter iterations with marginal_error still
          >= tol, one SinkhornConvergenceWarning per call says how many and how far.
          Converging needs eps well above the rounding error of the potentials (about
          finfo(dtype).eps * max|cost|); below that the plan is still a finite column-exact
          plan, but its row error stays large (and is reported).
        - Log-domain iterations: no underflow at small eps. float32 and float64 are computed
          in their own precision; float16 / bfloat16 in float32, returned in the input dtype.
        - Differentiable with respect to cost, a and b. The gradient is the exact gradient of
          the computed plan, i.e. of the iterations that actually ran (reverse-mode through
          them, with the iterates stored during the forward), matching autograd through
          aubench.ops.reference.sinkhorn. The stopping decisions are treated as constants,
          and zero-mass entries keep their support fixed (one-sided derivative).
        - Inputs are validated first (shapes, dtypes, devices, finite cost, non-negative
          finite marginals, eps in range, max_iter >= 1, tol >= 0): ValueError / TypeError.

    Uses the compiled kernels (CPU, and CUDA when built with them) and otherwise the
    pure-PyTorch reference, after one warning.
    """
    cost, a, b, cost_scale = _check_inputs(cost, a, b, eps, max_iter, tol)
    if not isinstance(return_info, bool):
        raise TypeError(f"sinkhorn: return_info must be a bool, got {type(return_info).__name__}")
    out_dtype = a.dtype
    compute_dtype = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    eps, max_iter, tol = float(eps), int(max_iter), float(tol)
    _check_eps_in_range(eps, cost_scale, a.shape[1], compute_dtype)
    cost, a, b = cost.to(compute_dtype), a.to(compute_dtype), b.to(compute_dtype)
    if _use_kernels(a.device):
        _register_once()
        keep_history = torch.is_grad_enabled() and (
            cost.requires_grad or a.requires_grad or b.requires_grad
        )
        plan, _, iterations, marginal_error = torch.ops.aubench.sinkhorn(
            cost, a, b, eps, max_iter, tol, keep_history
        )
    else:
        plan, iterations, marginal_error = reference.sinkhorn(
            cost, a, b, eps, max_iter, tol, return_info=True
        )
    if tol > 0:
        _warn_if_not_converged(iterations, marginal_error, eps, max_iter, tol, cost_scale)
    plan = plan.to(out_dtype)
    return (plan, SinkhornInfo(iterations, marginal_error)) if return_info else plan


def eps_range(cost_scale: float, k: int, dtype: torch.dtype) -> tuple[float, float]:
    """(smallest, largest) eps the kernels run at in `dtype` (float32 or float64) for costs of
    magnitude up to cost_scale and K x K problems, without overflow, underflow or NaN.

    Smallest: eps must be a normal number of the dtype (a subnormal eps has lost its
    precision, and 1 / eps overflows), and the exponents (f_i + g_j - C_ij) / eps, which the
    potentials f, g (within about 2 max|C| after the first iteration) bound by 4 max|C| / eps,
    must stay finite. Largest: f = eps * (log(a_i / sum a) - LSE(...)) must stay finite, and
    those logs are at most log(max / tiny) + log(K) in magnitude.
    """
    info = torch.finfo(dtype)
    smallest = max(info.tiny, 4.0 * cost_scale / info.max)
    largest = info.max / (4.0 * (math.log(info.max) - math.log(info.tiny) + math.log(k) + 1.0))
    return smallest, largest


def _check_eps_in_range(eps: float, cost_scale: float, k: int, dtype: torch.dtype) -> None:
    smallest, largest = eps_range(cost_scale, k, dtype)
    name = str(dtype).replace("torch.", "")
    if 4.0 * cost_scale > torch.finfo(dtype).max:
        raise ValueError(
            f"sinkhorn: cost entries up to {cost_scale:.3g} overflow {name} arithmetic inside "
            "the iterations; rescale the cost (and eps with it) or use float64"
        )
    if eps < smallest:
        raise ValueError(
            f"sinkhorn: eps={eps:g} underflows {name}: with max|cost| = {cost_scale:.3g} the "
            f"smallest eps {name} can run at is {smallest:.3g} (eps must be a normal {name} "
            "number and max|cost| / eps must not overflow); use a larger eps or float64"
        )
    if eps > largest:
        raise ValueError(
            f"sinkhorn: eps={eps:g} overflows {name}: the largest eps {name} can run at is "
            f"{largest:.3g}; use a smaller eps"
        )


def _warn_if_not_converged(iterations, marginal_error, eps, max_iter, tol, cost_scale):
    """One SinkhornConvergenceWarning when any problem ran max_iter and still missed tol."""
    if iterations.numel() == 0:
        return
    missed = (iterations == max_iter) & (marginal_error >= tol)
    count, worst = torch.stack(
        [missed.sum().to(marginal_error.dtype), torch.where(missed, marginal_error, 0).max()]
    ).tolist()
    if not count:
        return
    resolution = torch.finfo(marginal_error.dtype).eps * cost_scale
    name = str(marginal_error.dtype).replace("torch.", "")
    hint = (
        f"eps={eps:g} is below {name}'s resolution of these potentials (about "
        f"{resolution:.2g}), so more iterations cannot help: use a larger eps or float64"
        if eps < resolution
        else "raise max_iter, eps or tol"
    )
    warnings.warn(
        f"sinkhorn: {int(count)} of {iterations.numel()} problems missed tol={tol:g} after "
        f"max_iter={max_iter} iterations (largest marginal error {worst:.3g}); {hint}",
        SinkhornConvergenceWarning,
        stacklevel=3,
    )


def _check_inputs(cost, a, b, eps, max_iter, tol):
    """Validates the arguments; returns (cost as (B or 1, K, K), a, b, max |cost|)."""
    for name, value in (("cost", cost), ("a", a), ("b", b)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"sinkhorn: {name} must be a torch.Tensor, got {type(value).__name__}")
    if a.dim() != 2:
        raise ValueError(f"sinkhorn: a must have shape (B, K), got {tuple(a.shape)}")
    if b.shape != a.shape:
        raise ValueError(
            f"sinkhorn: b must have the shape of a {tuple(a.shape)}, got {tuple(b.shape)}"
        )
    batch, k = a.shape
    if k < 1:
        raise ValueError("sinkhorn: K (a.shape[1]) must be at least 1")
    if tuple(cost.shape) not in ((batch, k, k), (k, k)):
        raise ValueError(
            f"sinkhorn: cost must have shape (B, K, K) = {(batch, k, k)} or (K, K) = {(k, k)} "
            f"to match a and b, got {tuple(cost.shape)}"
        )
    for name, value in (("cost", cost), ("a", a), ("b", b)):
        if value.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"sinkhorn: {name} must be float16, bfloat16, float32 or float64, "
                f"got {value.dtype}"
            )
    if not (cost.dtype == a.dtype == b.dtype):
        raise TypeError(
            f"sinkhorn: cost, a and b must share one dtype, got {cost.dtype}, {a.dtype}, "
            f"{b.dtype}"
        )
    if not (cost.device == a.device == b.device):
        raise ValueError(
            f"sinkhorn: cost, a and b must be on one device, got {cost.device}, {a.device}, "
            f"{b.device}"
        )
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"sinkhorn: eps must be a real number, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"sinkhorn: eps must be finite and > 0, got {eps}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral):
        raise TypeError(f"sinkhorn: max_iter must be an int, got {type(max_iter).__name__}")
    if max_iter < 1:
        raise ValueError(f"sinkhorn: max_iter must be >= 1, got {max_iter}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"sinkhorn: tol must be a real number, got {type(tol).__name__}")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"sinkhorn: tol must be finite and >= 0, got {tol}")
    # One host synchronisation for all value checks (and the cost's scale, for eps's range).
    with torch.no_grad():
        magnitude = cost.abs()
        scale = magnitude.amax() if cost.numel() else magnitude.new_zeros(())
        *flags, cost_scale = torch.stack(
            [
                ~torch.isfinite(cost).all(),
                ~torch.isfinite(a).all(),
                (a < 0).any(),
                ~torch.isfinite(b).all(),
                (b < 0).any(),
                scale,
            ]
        ).double().tolist()
    messages = (
        "cost must be finite (it contains NaN or inf)",
        "a must be finite (it contains NaN or inf)",
        "a must be non-negative (it has negative entries)",
        "b must be finite (it contains NaN or inf)",
        "b must be non-negative (it has negative entries)",
    )
    for bad, message in zip(flags, messages):
        if bad:
            raise ValueError(f"sinkhorn: {message}")
    return (cost.unsqueeze(0) if cost.dim() == 2 else cost), a, b, cost_scale


def _use_kernels(device: torch.device) -> bool:
    global _warned_no_cuda_kernels
    if device.type == "cpu":
        return have_extension()
    if device.type == "cuda":
        if have_cuda_kernels():
            return True
        if have_extension() and not _warned_no_cuda_kernels:
            _warned_no_cuda_kernels = True
            warnings.warn(
                "aubench._C was built without its CUDA kernels; sinkhorn on CUDA tensors runs "
                "the slower pure-PyTorch reference instead (rebuild with AUBENCH_CUDA=1).",
                RuntimeWarning,
                stacklevel=3,
            )
    return False


def _register_once() -> None:
    """Fake (meta) kernels and the autograd formula of torch.ops.aubench.sinkhorn."""
    global _registered
    if _registered:
        return
    _registered = True
    torch.library.register_fake("aubench::sinkhorn")(_sinkhorn_fake)
    torch.library.register_fake("aubench::sinkhorn_backward")(_sinkhorn_backward_fake)
    torch.library.register_autograd(
        "aubench::sinkhorn", _sinkhorn_grad, setup_context=_sinkhorn_setup_context
    )


def _sinkhorn_fake(cost, a, b, eps, max_iter, tol, keep_history):
    batch, k = a.shape
    return (
        a.new_empty(batch, k, k),
        a.new_empty(batch, max_iter if keep_history else 0, k),
        a.new_empty(batch, dtype=torch.int64),
        a.new_empty(batch),
    )


def _sinkhorn_backward_fake(grad_plan, plan, cost, a, b, g_history, num_iter, eps):
    batch, k = a.shape
    return a.new_empty(batch, k, k), a.new_empty(batch, k), a.new_empty(batch, k)


def _sinkhorn_setup_context(ctx, inputs, output):
    cost, a, b, eps, _max_iter, _tol, _keep_history = inputs
    plan, g_history, num_iter, marginal_error = output
    ctx.save_for_backward(cost, a, b, plan, g_history, num_iter)
    ctx.eps = eps
    ctx.mark_non_differentiable(g_history, num_iter, marginal_error)


def _sinkhorn_grad(ctx, grad_plan, _grad_history, _grad_num_iter, _grad_marginal_error):
    cost, a, b, plan, g_history, num_iter = ctx.saved_tensors
    if g_history.shape[1] == 0 and a.shape[0] > 0:
        raise RuntimeError(
            "aubench::sinkhorn: backward needs the iterates; call the op with "
            "keep_history=True (aubench.ops.sinkhorn does so when gradients are required)"
        )
    grad_cost, grad_a, grad_b = torch.ops.aubench.sinkhorn_backward(
        grad_plan.contiguous(), plan, cost, a, b, g_history, num_iter, ctx.eps
    )
    if cost.shape[0] != grad_cost.shape[0]:  # (1, K, K) cost shared by the batch
        grad_cost = grad_cost.sum(0, keepdim=True)
    return grad_cost, grad_a, grad_b, None, None, None, None
