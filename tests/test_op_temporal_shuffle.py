"""Temporal-shuffle clips and the shuffle-permutation maker."""
import math
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aubench.ops import make_shuffle_permutations, temporal_shuffle_features
from aubench.ops import temporal_shuffle
from aubench.ops._extension import have_cuda_kernels, have_extension
from aubench.ops import reference

needs_extension = pytest.mark.skipif(not have_extension(), reason="aubench._C is not built")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)

# (B, N, C): N = 2, B = 1, C = 1, long clips.
SHAPES = [(1, 2, 1), (2, 2, 3), (3, 5, 8), (1, 64, 4), (4, 7, 33), (6, 3, 16)]


def perms(batch, frames, seed=0):
    return make_shuffle_permutations(batch, frames, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch,frames,channels", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_matches_reference(batch, frames, channels, dtype, index_dtype):
    features = torch.randn(batch, frames, channels, dtype=dtype, requires_grad=True)
    perm = perms(batch, frames).to(index_dtype)
    inputs, labels = temporal_shuffle_features(features, perm)
    expected, expected_labels = reference.temporal_shuffle_features(features, perm)
    assert inputs.shape == (2 * batch, frames, channels)
    torch.testing.assert_close(inputs, expected, rtol=0, atol=0)
    torch.testing.assert_close(labels, expected_labels, rtol=0, atol=0)
    upstream = torch.randn_like(inputs)
    torch.testing.assert_close(torch.autograd.grad(inputs, features, upstream),
                               torch.autograd.grad(expected, features, upstream))


def test_semantics_by_hand():
    features = torch.arange(2 * 3 * 2, dtype=torch.float64).view(2, 3, 2) ** 2
    perm = torch.tensor([[2, 0, 1], [1, 0, 2]])
    clips, labels = temporal_shuffle_features(features, perm)
    assert labels.tolist() == [1, 1, 0, 0]
    assert torch.equal(clips[:2], features)
    assert torch.equal(clips[2], features[0, [2, 0, 1]])
    assert torch.equal(clips[3], features[1, [1, 0, 2]])
    # the gradient of frame f: the real clip's at position f plus the shuffled copy's where f went
    upstream = torch.arange(4 * 3 * 2, dtype=torch.float64).view(4, 3, 2)
    (grad,) = torch.autograd.grad(temporal_shuffle_features(features.requires_grad_(), perm)[0],
                                  features, upstream)
    assert torch.equal(grad[0], upstream[0] + upstream[2, [1, 2, 0]])
    assert torch.equal(grad[1], upstream[1] + upstream[3, [1, 0, 2]])


def test_noncontiguous_inputs():
    base = torch.randn(3, 6, 5)
    strided = base.transpose(1, 2).contiguous().transpose(1, 2)  # (3, 6, 5), channel stride 6
    assert not strided.is_contiguous()
    perm = torch.stack([perms(3, 6), perms(3, 6)], dim=2)[..., 0]
    assert not perm.is_contiguous()
    torch.testing.assert_close(temporal_shuffle_features(strided, perm)[0],
                               reference.temporal_shuffle_features(base, perm)[0])


def test_empty_batch():
    inputs, labels = temporal_shuffle_features(torch.randn(0, 4, 3), torch.zeros(0, 4,
                                                                                  dtype=torch.long))
    assert inputs.shape == (0, 4, 3) and labels.shape == (0,)


def test_gradcheck_and_double_backward():
    features = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    perm = perms(2, 4)

    def inputs_of(features):
        return temporal_shuffle_features(features, perm)[0]

    assert torch.autograd.gradcheck(inputs_of, (features,))
    assert torch.autograd.gradgradcheck(inputs_of, (features,))


@needs_extension
def test_opcheck_every_op():
    ops = torch.ops.aubench
    perm = perms(3, 5)
    for args in [(torch.randn(3, 5, 4, requires_grad=True), perm),
                 (torch.randn(3, 5, 4, requires_grad=True), perm.int()),
                 (torch.randn(3, 2, 1, requires_grad=True), perms(3, 2))]:
        torch.library.opcheck(ops.temporal_shuffle_features, args)
    torch.library.opcheck(ops.temporal_shuffle_features_backward,
                          (torch.randn(6, 5, 4, requires_grad=True), perm))


def test_torch_compile_matches_eager():
    features = torch.randn(4, 5, 6, requires_grad=True)
    perm = perms(4, 5)

    def loss(features):
        inputs, labels = temporal_shuffle_features(features * 1.5, perm)
        return (inputs.mean(dim=(1, 2)) - labels).square().sum()

    compiled = torch.compile(loss, backend="aot_eager")
    torch.testing.assert_close(compiled(features), loss(features))
    torch.testing.assert_close(torch.autograd.grad(compiled(features), features),
                               torch.autograd.grad(loss(features), features))

    def unchecked(features):  # no validation sync: one graph
        return temporal_shuffle_features(features, perm, validate=False)[0].sum()

    whole = torch.compile(unchecked, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(whole(features), temporal_shuffle_features(features, perm)[0].sum())


def test_reference_fallback(monkeypatch):
    features, perm = torch.randn(2, 5, 3), perms(2, 5)
    fused = temporal_shuffle_features(features, perm)
    monkeypatch.setattr(temporal_shuffle, "use_kernels", lambda tensor: False)
    for got, want in zip(temporal_shuffle_features(features, perm), fused):
        torch.testing.assert_close(got, want)


# ---- permutations ------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [2, 3, 5, 16])
def test_permutations_are_never_identity(frames):
    perm = perms(500, frames, seed=frames)
    assert perm.dtype == torch.int64 and perm.shape == (500, frames)
    assert torch.equal(perm.sort(1).values, torch.arange(frames).expand(500, -1))
    assert not (perm == torch.arange(frames)).all(1).any()
    assert torch.equal(perm, perms(500, frames, seed=frames))  # reproducible


def test_permutations_are_uniform_over_non_identity():
    counts = Counter(map(tuple, perms(6000, 3, seed=1).tolist()))
    assert len(counts) == math.factorial(3) - 1
    # 5 outcomes, 1200 expected each, sd ~31: a 6-sd band never fails by chance.
    assert all(abs(count - 1200) < 190 for count in counts.values())


@pytest.mark.parametrize("batch,n", [(2, 1), (2, 0), (-1, 4), (2, 2.0)])
def test_permutations_reject_bad_arguments(batch, n):
    with pytest.raises(ValueError):
        make_shuffle_permutations(batch, n)


# ---- bad inputs --------------------------------------------------------------------------------
BAD_CASES = ["features_ndim", "features_dtype", "perm_dtype", "perm_shape", "perm_range",
             "perm_negative", "perm_repeat", "perm_batch", "not_tensor"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(BAD_CASES), batch=st.integers(1, 4), frames=st.integers(2, 9),
       channels=st.integers(1, 5), data=st.data())
def test_bad_inputs_raise_clear_errors(case, batch, frames, channels, data):
    features = torch.randn(batch, frames, channels)
    perm = perms(batch, frames, seed=data.draw(st.integers(0, 99)))
    row = data.draw(st.integers(0, batch - 1))
    col = data.draw(st.integers(0, frames - 1))
    name = "perm"
    if case == "features_ndim":
        features, name = features[0], "features"
    elif case == "features_dtype":
        wrong = data.draw(st.sampled_from([torch.int32, torch.bool]))
        features, name = features.to(wrong), "features"
    elif case == "perm_dtype":
        perm = perm.to(data.draw(st.sampled_from([torch.float32, torch.int16, torch.uint8])))
    elif case == "perm_shape":
        perm = perm[:, :-1]
    elif case == "perm_range":
        perm[row, col] = frames + data.draw(st.integers(0, 50))
    elif case == "perm_negative":
        perm[row, col] = -data.draw(st.integers(1, 50))
    elif case == "perm_repeat":
        perm[row, col] = perm[row, (col + 1) % frames]
    elif case == "perm_batch":
        perm = torch.cat([perm, perm])
    else:  # not_tensor
        features, name = features.tolist(), "features"
    with pytest.raises((ValueError, TypeError), match=name):
        temporal_shuffle_features(features, perm)


@needs_extension
def test_kernel_refuses_out_of_range_even_unvalidated():
    with pytest.raises(RuntimeError, match="outside"):
        temporal_shuffle_features(torch.randn(1, 3, 2), torch.tensor([[0, 5, 1]]), validate=False)
    for bad in ([[0, 3, 1]], [[0, -1, 1]]):  # the backward kernel checks too
        with pytest.raises(RuntimeError, match="perm holds .*, outside"):
            torch.ops.aubench.temporal_shuffle_features_backward(torch.randn(2, 3, 2),
                                                                 torch.tensor(bad))


# ---- CUDA --------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not have_cuda_kernels(), reason="aubench._C was built without CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("batch,frames,channels", SHAPES + [(64, 5, 512), (64, 64, 512)])
def test_cuda_matches_cpu(dtype, index_dtype, batch, frames, channels):
    features = torch.randn(batch, frames, channels).to(dtype)
    perm = perms(batch, frames).to(index_dtype)
    upstream = torch.randn(2 * batch, frames, channels).to(dtype)
    results = []
    for device in ("cpu", "cuda"):
        fd = features.to(device).requires_grad_()
        inputs, labels = temporal_shuffle_features(fd, perm.to(device))
        (grad,) = torch.autograd.grad(inputs, fd, upstream.to(device))
        results.append([t.cpu() for t in (inputs, labels, grad)])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not have_cuda_kernels(), reason="aubench._C was built without CUDA")
def test_cuda_opcheck_and_permutations():
    generator = torch.Generator("cuda").manual_seed(0)
    perm = make_shuffle_permutations(4, 5, generator=generator)
    assert perm.is_cuda and not (perm == torch.arange(5, device="cuda")).all(1).any()
    features = torch.randn(4, 5, 6, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.aubench.temporal_shuffle_features, (features, perm))
    bad = perm.clone()
    bad[0, 0] = 5
    with pytest.raises(ValueError, match="perm"):
        temporal_shuffle_features(features, bad)
