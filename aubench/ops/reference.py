"""Pure-PyTorch reference versions of aubench's custom ops.

They are the test oracles of the compiled kernels and the fallback when aubench._C is not
built. They expect inputs already validated by the public wrappers in aubench/ops/.
"""
import torch

# ---- batched log-domain Sinkhorn ----------------------------------------------------------


def _masked_logsumexp(values: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp over `dim` of the entries where `mask` is True (at least one per slice)."""
    return torch.where(mask, values, float("-inf")).logsumexp(dim)


def _log_normalised_marginal(weights: torch.Tensor, valid: torch.Tensor):
    """(support mask, log of weights / weights.sum()) with 0 outside the support.

    A degenerate problem (zero total mass in a or b) gets a dummy uniform marginal, so its
    iterations stay finite; its plan is zeroed at the end and its gradients are zero.
    """
    k = weights.shape[1]
    support = (weights > 0) | ~valid[:, None]
    total = weights.sum(1, keepdim=True)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    safe_weights = torch.where(weights > 0, weights, torch.ones_like(weights))
    log_weights = torch.log(safe_weights) - torch.log(safe_total)
    uniform = torch.full_like(log_weights, -torch.log(torch.tensor(float(k))).item())
    log_weights = torch.where(valid[:, None], log_weights, uniform)
    return support, torch.where(support, log_weights, torch.zeros_like(log_weights))


def sinkhorn(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    max_iter: int,
    tol: float,
    return_info: bool = False,
):
    """Log-domain Sinkhorn, batched, written with differentiable PyTorch operations.

    cost (B, K, K) or (1, K, K), a and b (B, K) non-negative; returns the plan (B, K, K)
    (and, with return_info, the number of iterations each problem ran, int64 (B,), and the
    L1 error of each returned plan's row sums against a / sum(a), (B,)).
    This defines the iterations, stopping rule and final plan that the compiled kernels
    reproduce:

        alpha = log(a / sum a), beta = log(b / sum b)   (only over each support)
        g = 0
        repeat t = 1 .. max_iter:
            f_i = eps * (alpha_i - LSE_j((g_j - C_ij) / eps))      over j with b_j > 0
            g_j = eps * (beta_j - h_j),  h_j = LSE_i((f_i - C_ij) / eps)   over i with a_i > 0
            if t < max_iter and tol > 0:
                err = sum_i |sum_j plan_ij - a_i / sum a|            (columns are exact)
                stop this problem when err < tol
        plan_ij = (b_j / sum b) * softmax_i((f_i - C_ij) / eps), zero outside
                  support(a) x support(b);  = exp((f_i + g_j - C_ij) / eps) = exp(beta_j +
                  (f_i - C_ij) / eps - h_j) in exact arithmetic.

    The plan is normalised explicitly (max-shifted exponentials over their sum) rather than
    through the potentials, so it stays finite, with columns summing to b / sum b, even where
    f_i + g_j - C_ij or h_j's max + log(sum) cancel to noise (eps below the rounding error of
    the potentials, about finfo.eps * max|C|).
    A problem whose a or b has zero total mass gets an all-zero plan (num_iter 0, error 0).
    Autograd through this function differentiates the iterations that actually ran.
    """
    batch, k = a.shape
    cost = cost.expand(batch, k, k)
    valid = (a.sum(1) > 0) & (b.sum(1) > 0)
    support_a, alpha = _log_normalised_marginal(a, valid)
    support_b, beta = _log_normalised_marginal(b, valid)
    rows = support_a[:, :, None].expand(batch, k, k)
    cols = support_b[:, None, :].expand(batch, k, k)
    target_rows = torch.where(support_a, alpha.exp(), torch.zeros_like(alpha))

    g = torch.zeros_like(beta)
    row_lse = _masked_logsumexp((g[:, None, :] - cost) / eps, cols, 2)
    active = valid.clone()
    num_iter = torch.zeros(batch, dtype=torch.int64, device=a.device)
    f = torch.zeros_like(alpha)
    for step in range(1, max_iter + 1):
        f_new = eps * (alpha - row_lse)
        g_new = eps * (beta - _masked_logsumexp((f_new[:, :, None] - cost) / eps, rows, 1))
        f = torch.where(active[:, None], f_new, f)
        g = torch.where(active[:, None], g_new, g)
        num_iter += active.long()
        if step == max_iter:
            break
        row_lse = _masked_logsumexp((g[:, None, :] - cost) / eps, cols, 2)
        if tol > 0:
            with torch.no_grad():
                row_mass = torch.where(support_a, (f / eps + row_lse).exp(), 0.0)
                err = (row_mass - target_rows).abs().sum(1)
                active = active & (err >= tol)
            if not bool(active.any()):
                break

    # b_j times a softmax over i (max-shifted, explicitly normalised): see the docstring.
    columns = torch.where(rows, (f[:, :, None] - cost) / eps, float("-inf")).softmax(1)
    keep = rows & cols & valid[:, None, None]
    plan = torch.where(keep, columns * beta.exp()[:, None, :], 0.0)
    if not return_info:
        return plan
    with torch.no_grad():
        row_error = torch.where(support_a, (plan.sum(2) - target_rows).abs(), 0.0).sum(1)
        marginal_error = torch.where(valid, row_error, 0.0)
    return plan, num_iter, marginal_error




# ---- temporal-shuffle clips --------------------------------------------------------------------
def temporal_shuffle_features(
    features: torch.Tensor, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips (2B, N, C), labels (2B,)): the clips as they are, then each clip b with its frame t
    taken from features[b, perm[b, t]]; labels 1 = real order, 0 = shuffled."""
    batch, _, channels = features.shape
    index = perm.long().unsqueeze(-1).expand(-1, -1, channels)
    clips = torch.cat([features, features.gather(1, index)], dim=0)
    labels = torch.cat([features.new_ones(batch), features.new_zeros(batch)])
    return clips, labels


# ---- masked-token gather / restore (MAE) -------------------------------------------------------
def gather_tokens(x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """The MAE encoder's gather: x[b, ids_keep[b, k]] -> (B, K, D)."""
    index = ids_keep.long().unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return x.gather(1, index)


def restore_tokens(
    x_vis: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor
) -> torch.Tensor:
    """The MAE decoder's cat-then-gather: append L - K mask tokens, unshuffle -> (B, L, D)."""
    batch, num_keep, dim = x_vis.shape
    length = ids_restore.shape[1]
    mask_tokens = mask_token.reshape(1, 1, dim).expand(batch, length - num_keep, dim)
    full = torch.cat([x_vis, mask_tokens], dim=1)
    index = ids_restore.long().unsqueeze(-1).expand(-1, -1, dim)
    return full.gather(1, index)
