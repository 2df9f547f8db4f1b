"""Pure-PyTorch versions of aubench's custom ops: the test oracle, and the fallback when the
compiled extension (aubench._C) is not built. Each section belongs to one op."""
import torch


# ---- temporal-shuffle classifier features ------------------------------------------------------
def temporal_shuffle_features_reference(
    features: torch.Tensor, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (2B, N, 2C), labels (2B,)): real clips then shuffled clips, each frame
    [d_t, d_t - d_{t-1}] with d_{-1} := d_0; labels 1 = real order, 0 = shuffled."""
    batch, _, channels = features.shape
    index = perm.long().unsqueeze(-1).expand(-1, -1, channels)
    clips = torch.cat([features, features.gather(1, index)], dim=0)
    previous = torch.cat([clips[:, :1], clips[:, :-1]], dim=1)
    inputs = torch.cat([clips, clips - previous], dim=-1)
    labels = torch.cat([features.new_ones(batch), features.new_zeros(batch)])
    return inputs, labels


# ---- masked-token gather / restore (MAE) -------------------------------------------------------
def gather_tokens_reference(x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """The MAE encoder's gather: x[b, ids_keep[b, k]] -> (B, K, D)."""
    index = ids_keep.long().unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return x.gather(1, index)


def restore_tokens_reference(
    x_vis: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor
) -> torch.Tensor:
    """The MAE decoder's cat-then-gather: append L - K mask tokens, unshuffle -> (B, L, D)."""
    batch, num_keep, dim = x_vis.shape
    length = ids_restore.shape[1]
    mask_tokens = mask_token.reshape(1, 1, dim).expand(batch, length - num_keep, dim)
    full = torch.cat([x_vis, mask_tokens], dim=1)
    index = ids_restore.long().unsqueeze(-1).expand(-1, -1, dim)
    return full.gather(1, index)
