"""Masked-token gather / restore ops and the MAE mask makers."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aubench.ops import block_masking, gather_tokens, random_masking, restore_tokens
from aubench.ops import token_gather
from aubench.ops._extension import have_cuda_kernels, have_extension
from aubench.ops import reference

needs_extension = pytest.mark.skipif(not have_extension(), reason="aubench._C is not built")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)

# (B, L, D, K): K = 0 and K = L, B = 1, D = 1, odd widths (unaligned rows on CUDA).
SHAPES = [(1, 1, 1, 0), (1, 1, 1, 1), (2, 6, 4, 0), (2, 6, 4, 6), (3, 16, 8, 4), (1, 49, 3, 12),
          (4, 10, 5, 7), (5, 196, 12, 49)]


def masks(batch, length, num_keep, seed=0, device="cpu"):
    """(ids_keep, ids_restore) keeping num_keep tokens, as random_masking makes them."""
    ratio = 1 - num_keep / length
    generator = torch.Generator(device).manual_seed(seed)
    ids_keep, ids_restore, _ = random_masking(batch, length, ratio, generator=generator)
    # int(L * (1 - ratio)) can round below num_keep; rebuild from the same order if so.
    if ids_keep.shape[1] != num_keep:
        ids_shuffle = ids_restore.argsort(dim=1)
        ids_keep = ids_shuffle[:, :num_keep]
    return ids_keep, ids_restore


def noncontiguous(x):
    """Same values, strided memory (every other row of a wider buffer)."""
    wide = torch.empty(x.shape[0], x.shape[1], 2 * x.shape[2], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    return wide[..., ::2]


@pytest.mark.parametrize("batch,length,dim,num_keep", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_gather_restore_match_reference(batch, length, dim, num_keep, dtype, index_dtype):
    ids_keep, ids_restore = masks(batch, length, num_keep)
    ids_keep, ids_restore = ids_keep.to(index_dtype), ids_restore.to(index_dtype)
    x = torch.randn(batch, length, dim, dtype=dtype, requires_grad=True)
    mask_token = torch.randn(dim, dtype=dtype, requires_grad=True)

    visible = gather_tokens(x, ids_keep)
    restored = restore_tokens(visible, ids_restore, mask_token)
    expected_visible = reference.gather_tokens(x, ids_keep)
    expected = reference.restore_tokens(expected_visible, ids_restore, mask_token)
    torch.testing.assert_close(visible, expected_visible, rtol=0, atol=0)
    torch.testing.assert_close(restored, expected, rtol=0, atol=0)

    upstream = torch.randn_like(restored)
    grads = torch.autograd.grad(restored, (x, mask_token), upstream)
    expected_grads = torch.autograd.grad(expected, (x, mask_token), upstream)
    torch.testing.assert_close(grads[0], expected_grads[0], rtol=0, atol=0)
    # The mask-token gradient sums B * (L - K) rows, in another order than autograd's.
    torch.testing.assert_close(grads[1], expected_grads[1], rtol=1e-5, atol=1e-4)


def test_noncontiguous_inputs():
    ids_keep, ids_restore = masks(3, 20, 7)
    x = torch.randn(3, 20, 6)
    x_strided = noncontiguous(x)
    assert not x_strided.is_contiguous()
    keep_strided = torch.stack([ids_keep, ids_keep], dim=2)[..., 0]
    assert not keep_strided.is_contiguous()
    torch.testing.assert_close(gather_tokens(x_strided, keep_strided), gather_tokens(x, ids_keep))
    visible = gather_tokens(x, ids_keep)
    mask_token = torch.randn(12)[::2]
    torch.testing.assert_close(
        restore_tokens(noncontiguous(visible), ids_restore, mask_token),
        reference.restore_tokens(visible, ids_restore, mask_token),
    )


def test_mae_parameter_shaped_mask_token():
    ids_keep, ids_restore = masks(2, 9, 3)
    visible = torch.randn(2, 3, 5)
    token = torch.randn(1, 1, 5)
    torch.testing.assert_close(restore_tokens(visible, ids_restore, token),
                               restore_tokens(visible, ids_restore, token.view(5)))


def test_gradcheck_and_double_backward():
    ids_keep, ids_restore = masks(2, 7, 3)
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    token = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def round_trip(x, token):
        return restore_tokens(gather_tokens(x, ids_keep), ids_restore, token)

    assert torch.autograd.gradcheck(round_trip, (x, token))
    assert torch.autograd.gradgradcheck(round_trip, (x, token))


@needs_extension
def test_opcheck_every_op():
    ops = torch.ops.aubench
    ids_keep, ids_restore = masks(3, 10, 4)
    x = torch.randn(3, 10, 5, requires_grad=True)
    visible = torch.randn(3, 4, 5, requires_grad=True)
    token = torch.randn(5, requires_grad=True)
    cases = [
        (ops.gather_tokens, (x, ids_keep)),
        (ops.gather_tokens, (x, ids_keep.int())),
        (ops.gather_tokens_backward, (visible, ids_keep, 10)),
        (ops.restore_tokens, (visible, ids_restore, token)),
        (ops.restore_tokens_backward, (torch.randn(3, 10, 5, requires_grad=True), ids_restore, 4)),
        (ops.gather_tokens, (x[:, :0], ids_keep[:, :0])),  # L = K = 0
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_matches_eager():
    ids_keep, ids_restore = masks(2, 16, 4)
    x = torch.randn(2, 16, 8, requires_grad=True)
    token = torch.randn(8, requires_grad=True)

    def loss(x, token):
        return restore_tokens(gather_tokens(x, ids_keep) * 2, ids_restore, token).square().sum()

    compiled = torch.compile(loss, backend="aot_eager")
    torch.testing.assert_close(compiled(x, token), loss(x, token))
    torch.testing.assert_close(torch.autograd.grad(compiled(x, token), (x, token)),
                               torch.autograd.grad(loss(x, token), (x, token)))

    # Index validation synchronises (a graph break); without it the ops trace in one graph.
    def unchecked(x, token):
        visible = gather_tokens(x, ids_keep, validate=False) * 2
        return restore_tokens(visible, ids_restore, token, validate=False).square().sum()

    whole = torch.compile(unchecked, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(whole(x, token), loss(x, token))


def test_reference_fallback(monkeypatch):
    """Without kernels the public functions run the reference (same results)."""
    ids_keep, ids_restore = masks(2, 8, 3)
    x, token = torch.randn(2, 8, 4), torch.randn(4)
    fused = restore_tokens(gather_tokens(x, ids_keep), ids_restore, token)
    monkeypatch.setattr(token_gather, "use_kernels", lambda tensor: False)
    torch.testing.assert_close(restore_tokens(gather_tokens(x, ids_keep), ids_restore, token),
                               fused)


# ---- MAE semantics -----------------------------------------------------------------------------
@pytest.mark.parametrize("batch,length,ratio", [(4, 196, 0.75), (3, 49, 0.5), (1, 10, 0.0),
                                                (2, 10, 1.0), (2, 7, 0.33)])
def test_random_masking_is_official_mae(batch, length, ratio):
    ids_keep, ids_restore, mask = random_masking(
        batch, length, ratio, generator=torch.Generator().manual_seed(7)
    )
    # The official MAE random_masking steps, from the same noise.
    noise = torch.rand(batch, length, generator=torch.Generator().manual_seed(7))
    len_keep = int(length * (1 - ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    expected_restore = torch.argsort(ids_shuffle, dim=1)
    expected_keep = ids_shuffle[:, :len_keep]
    expected_mask = torch.ones([batch, length])
    expected_mask[:, :len_keep] = 0
    expected_mask = torch.gather(expected_mask, dim=1, index=expected_restore)
    assert torch.equal(ids_keep, expected_keep)
    assert torch.equal(ids_restore, expected_restore)
    assert torch.equal(mask, expected_mask)

    # The ops reproduce MAE's encoder gather and decoder cat-then-gather.
    x = torch.randn(batch, length, 6)
    token = torch.randn(6)
    visible = gather_tokens(x, ids_keep)
    torch.testing.assert_close(visible, torch.gather(
        x, 1, expected_keep.unsqueeze(-1).repeat(1, 1, 6)))
    mae_tokens = token.view(1, 1, 6).repeat(batch, length - len_keep, 1)
    mae_full = torch.gather(torch.cat([visible, mae_tokens], dim=1), 1,
                            expected_restore.unsqueeze(-1).repeat(1, 1, 6))
    restored = restore_tokens(visible, ids_restore, token)
    torch.testing.assert_close(restored, mae_full)
    torch.testing.assert_close(restored, torch.where(mask.bool()[..., None], token, x))


def largest_masked_rectangle(grid: torch.Tensor) -> int:
    """Area of the largest all-masked axis-aligned rectangle of a bool (H, W) grid."""
    height, width = grid.shape
    sums = torch.zeros(height + 1, width + 1, dtype=torch.long)
    sums[1:, 1:] = grid.long().cumsum(0).cumsum(1)
    best = 0
    for top in range(height):
        for bottom in range(top + 1, height + 1):
            for left in range(width):
                for right in range(left + 1, width + 1):
                    area = (bottom - top) * (right - left)
                    if area <= best:
                        continue
                    count = (sums[bottom, right] - sums[top, right]
                             - sums[bottom, left] + sums[top, left])
                    if count == area:
                        best = area
    return best


@pytest.mark.parametrize("grid_h,grid_w,ratio", [(8, 8, 0.5), (6, 9, 0.75), (5, 5, 0.3)])
def test_block_masking(grid_h, grid_w, ratio):
    batch, length = 12, grid_h * grid_w
    ids_keep, ids_restore, mask = block_masking(
        batch, grid_h, grid_w, ratio, generator=torch.Generator().manual_seed(3)
    )
    len_keep = int(length * (1 - ratio))
    num_mask = length - len_keep
    assert ids_keep.shape == (batch, len_keep) and ids_keep.dtype == torch.int64
    assert torch.equal(mask.sum(1), torch.full((batch,), float(num_mask)))
    assert torch.equal(ids_restore.sort(1).values, torch.arange(length).expand(batch, -1))
    assert torch.all(mask.gather(1, ids_keep) == 0)
    # MAE convention: position l holds token ids_restore[l] of [kept, masked].
    assert torch.equal(mask, (ids_restore >= len_keep).float())
    # One contiguous rectangle makes up most of each mask.
    for grid in mask.bool().view(batch, grid_h, grid_w):
        assert largest_masked_rectangle(grid) >= 0.4 * num_mask
    # Same generator seed, same masks; and the ops accept them.
    again = block_masking(batch, grid_h, grid_w, ratio, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip((ids_keep, ids_restore, mask), again))
    x = torch.randn(batch, length, 3)
    token = torch.zeros(3)
    torch.testing.assert_close(restore_tokens(gather_tokens(x, ids_keep), ids_restore, token),
                               x * (1 - mask)[..., None])


def test_block_masking_varies_position_and_shape():
    _, _, mask = block_masking(64, 14, 14, 0.5, generator=torch.Generator().manual_seed(0))
    assert len({tuple(row.nonzero().flatten().tolist()) for row in mask}) > 32


@pytest.mark.parametrize("call", [
    lambda: random_masking(2, 10, 1.5), lambda: random_masking(2, 0, 0.5),
    lambda: random_masking(-1, 10, 0.5), lambda: block_masking(2, 0, 4, 0.5),
    lambda: block_masking(2, 4, 4, -0.1), lambda: block_masking(2, 4, 4, 0.5, min_aspect=2.0),
])
def test_mask_makers_reject_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


# ---- bad inputs --------------------------------------------------------------------------------
BAD_CASES = ["x_ndim", "x_dtype", "ids_dtype", "ids_shape", "ids_batch", "ids_range_high",
             "ids_range_low", "ids_repeat", "too_many_keep", "restore_not_perm", "restore_range",
             "token_shape", "token_dtype", "restore_batch"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(BAD_CASES), batch=st.integers(1, 4), length=st.integers(2, 12),
       dim=st.integers(1, 6), data=st.data())
def test_bad_inputs_raise_clear_errors(case, batch, length, dim, data):
    num_keep = data.draw(st.integers(1, length - 1))
    row = data.draw(st.integers(0, batch - 1))
    ids_keep, ids_restore = masks(batch, length, num_keep, seed=data.draw(st.integers(0, 99)))
    x = torch.randn(batch, length, dim)
    visible = torch.randn(batch, num_keep, dim)
    token = torch.randn(dim)
    gather_args, restore_args = [x, ids_keep], [visible, ids_restore, token]
    if case == "x_ndim":
        gather_args[0], name = x[0], "x"
    elif case == "x_dtype":
        gather_args[0], name = x.to(data.draw(st.sampled_from([torch.int64, torch.uint8]))), "x"
    elif case == "ids_dtype":
        restore_args[1], name = ids_restore.float(), "ids_restore"
    elif case == "ids_shape":
        gather_args[1], name = ids_keep.flatten(), "ids_keep"
    elif case == "ids_batch":
        gather_args[1], name = torch.cat([ids_keep, ids_keep]), "ids_keep"
    elif case == "ids_range_high":
        bad = ids_keep.clone()
        bad[row, 0] = length + data.draw(st.integers(0, 100))
        gather_args[1], name = bad, "ids_keep"
    elif case == "ids_range_low":
        bad = ids_keep.clone()
        bad[row, -1] = -data.draw(st.integers(1, 100))
        gather_args[1], name = bad, "ids_keep"
    elif case == "ids_repeat":
        bad = torch.cat([ids_keep, ids_keep[:, :1]], dim=1) if num_keep < length else ids_keep
        gather_args[1], name = bad, "ids_keep"
    elif case == "too_many_keep":
        gather_args[1], name = torch.arange(length + 1).expand(batch, -1), "ids_keep"
    elif case == "restore_not_perm":
        bad = ids_restore.clone()
        bad[row, 1] = bad[row, 0]
        restore_args[1], name = bad, "ids_restore"
    elif case == "restore_range":
        bad = ids_restore.clone()
        bad[row, 0] = length
        restore_args[1], name = bad, "ids_restore"
    elif case == "token_shape":
        restore_args[2], name = torch.randn(dim + 1), "mask_token"
    elif case == "token_dtype":
        restore_args[2], name = token.double(), "mask_token"
    else:  # restore_batch
        restore_args[0], name = visible[:0], "ids_restore"
    call = gather_tokens if name in ("x", "ids_keep") else restore_tokens
    args = gather_args if call is gather_tokens else restore_args
    with pytest.raises((ValueError, TypeError), match=name):
        call(*args)


@needs_extension
def test_kernels_refuse_out_of_range_even_unvalidated():
    x = torch.randn(2, 5, 3)
    with pytest.raises(RuntimeError, match="outside"):
        gather_tokens(x, torch.tensor([[0, 7], [1, 2]]), validate=False)
    with pytest.raises(RuntimeError, match="outside"):
        restore_tokens(x[:, :2], torch.tensor([[0, 1, 2, 3, 9]] * 2), torch.zeros(3),
                       validate=False)
    # The backward kernels check too (they are called with the forward's indices).
    ops = torch.ops.aubench
    for bad in ([[0, 7], [1, 2]], [[0, -1], [1, 2]]):
        with pytest.raises(RuntimeError, match="ids_keep holds .*, outside"):
            ops.gather_tokens_backward(x[:, :2], torch.tensor(bad), 5)
    for bad in ([[0, 1, 2, 3, 5]] * 2, [[0, 1, -2, 3, 4]] * 2):
        with pytest.raises(RuntimeError, match="ids_restore holds .*, outside"):
            ops.restore_tokens_backward(x, torch.tensor(bad), 2)


# ---- CUDA --------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not have_cuda_kernels(), reason="aubench._C was built without CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("batch,length,dim,num_keep", SHAPES + [(64, 196, 768, 49)])
def test_cuda_matches_cpu(dtype, index_dtype, batch, length, dim, num_keep):
    ids_keep, ids_restore = masks(batch, length, num_keep)
    ids_keep, ids_restore = ids_keep.to(index_dtype), ids_restore.to(index_dtype)
    x = torch.randn(batch, length, dim).to(dtype)
    token = torch.randn(dim).to(dtype)
    upstream = torch.randn(batch, length, dim).to(dtype)
    results = []
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_()
        td = token.to(device).requires_grad_()
        out = restore_tokens(gather_tokens(xd, ids_keep.to(device)), ids_restore.to(device), td)
        grads = torch.autograd.grad(out, (xd, td), upstream.to(device))
        results.append([t.cpu() for t in (out, *grads)])
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1, length))


@pytest.mark.cuda
@pytest.mark.skipif(not have_cuda_kernels(), reason="aubench._C was built without CUDA")
def test_cuda_opcheck_and_bad_index():
    ids_keep, ids_restore = masks(3, 10, 4, device="cuda")
    x = torch.randn(3, 10, 5, device="cuda", requires_grad=True)
    token = torch.randn(5, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.aubench.gather_tokens, (x, ids_keep))
    torch.library.opcheck(torch.ops.aubench.restore_tokens, (x[:, :4], ids_restore, token))
    bad = ids_keep.clone()
    bad[0, 0] = 10
    with pytest.raises(ValueError, match="ids_keep"):
        gather_tokens(x, bad)
