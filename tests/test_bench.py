"""aubench.bench: what the size and speed records count."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aubench.bench import flops_per_frame


class _Attention(nn.Module):
    """predict = one scaled-dot-product attention over the batch's tokens, nothing else."""

    def predict(self, batch):
        x = batch["image"]
        return F.scaled_dot_product_attention(x, x, x)


def test_flops_count_attention_products_on_the_cpu():
    frames, heads, tokens, dim = 2, 4, 50, 16
    batch = {"image": torch.randn(frames, heads, tokens, dim)}
    # q k^T and (softmax) v: two (tokens x dim) by (dim x tokens)-sized products per head
    expected = 2 * (2 * heads * tokens * tokens * dim)
    assert flops_per_frame(_Attention(), batch) == expected
