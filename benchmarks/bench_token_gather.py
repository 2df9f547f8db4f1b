"""Masked-token gather / restore, forward + backward, at an MAE ViT-B/16 size (B=64, L=196,
D=768), against the MAE-style torch.gather and against a plain copy of the same bytes.

Baselines (benchmark.extra_info["impl"]):
- "torch.gather": what the official MAE does, differentiated by autograd: the encoder's
  x.gather(1, ids_keep[..., None].expand(-1, -1, D)), the decoder's cat-then-gather.
- "copy": the same bytes moved by contiguous bulk ATen copies into freshly allocated outputs of
  the op's shapes (allocation included, since the op must allocate its outputs too):
  gather forward clones K rows; its backward allocates L rows, copies K rows in and zero-fills
  the rest; restore forward allocates L rows, copies K rows in and fills the rest with the mask
  token; its backward clones K rows and sums the other L - K rows (the mask-token gradient).
  This is the floor any row-shuffling implementation can reach, with no index work at all.
"""
import pytest
import torch

from aubench.ops import gather_tokens, random_masking, restore_tokens
from aubench.ops._extension import have_cuda_kernels
from aubench.ops import reference

BATCH, LENGTH, DIM = 64, 196, 768
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and have_cuda_kernels()),
                       reason="needs a CUDA device and aubench._C built with CUDA"),
])]
IMPLS = ["aubench", "torch.gather", "copy"]


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def case(device, mask_ratio):
    generator = torch.Generator(device).manual_seed(0)
    ids_keep, ids_restore, _ = random_masking(BATCH, LENGTH, mask_ratio, generator=generator)
    num_keep = ids_keep.shape[1]
    x = torch.randn(BATCH, LENGTH, DIM, device=device, requires_grad=True)
    x_vis = torch.randn(BATCH, num_keep, DIM, device=device, requires_grad=True)
    mask_token = torch.randn(DIM, device=device, requires_grad=True)
    return ids_keep, ids_restore, x, x_vis, mask_token


def gather_step(impl: str, device: str, mask_ratio: float):
    """(one forward + backward of gather_tokens by `impl`, the bytes the plain copy moves for it:
    K rows read and written forward, L rows written and K read backward)."""
    ids_keep, _, x, _, _ = case(device, mask_ratio)
    num_keep = ids_keep.shape[1]
    grad = torch.randn(BATCH, num_keep, DIM, device=device)
    moved = 4 * BATCH * DIM * (2 * num_keep + LENGTH + num_keep)
    if impl == "copy":
        kept = torch.randn(BATCH, num_keep, DIM, device=device)

        def step():
            kept.clone()  # forward
            grad_x = torch.empty(BATCH, LENGTH, DIM, device=device)  # backward
            grad_x[:, :num_keep].copy_(kept)
            grad_x[:, num_keep:].zero_()
            synchronize(device)
        return step, moved
    gather = gather_tokens if impl == "aubench" else reference.gather_tokens

    def step():
        torch.autograd.grad(gather(x, ids_keep), x, grad)
        synchronize(device)
    return step, moved


def restore_step(impl: str, device: str, mask_ratio: float):
    """(one forward + backward of restore_tokens by `impl`, the bytes the plain copy moves for
    it: K rows read and L written forward, L rows read and K written backward)."""
    ids_keep, ids_restore, _, x_vis, mask_token = case(device, mask_ratio)
    num_keep = ids_keep.shape[1]
    grad = torch.randn(BATCH, LENGTH, DIM, device=device)
    moved = 4 * BATCH * DIM * (num_keep + LENGTH + LENGTH + num_keep)
    if impl == "copy":
        kept = x_vis.detach()
        token = mask_token.detach()
        # Contiguous stand-ins for the gradient's kept and masked rows: ATen reduces a strided
        # slice like grad[:, K:] far slower than a contiguous block, which would flatter us.
        grad_kept = torch.randn(BATCH, num_keep, DIM, device=device)
        grad_masked = torch.randn(BATCH * (LENGTH - num_keep), DIM, device=device)

        def step():
            out = torch.empty(BATCH, LENGTH, DIM, device=device)  # forward
            out[:, :num_keep].copy_(kept)
            out[:, num_keep:].copy_(token.expand(BATCH, LENGTH - num_keep, DIM))
            grad_kept.clone(), grad_masked.sum(dim=0)  # backward
            synchronize(device)
        return step, moved
    restore = restore_tokens if impl == "aubench" else reference.restore_tokens

    def step():
        torch.autograd.grad(restore(x_vis, ids_restore, mask_token), (x_vis, mask_token), grad)
        synchronize(device)
    return step, moved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask_ratio", [0.5, 0.75])
@pytest.mark.parametrize("impl", IMPLS)
def test_gather_tokens(benchmark, device, mask_ratio, impl):
    benchmark.group = f"gather_tokens fwd+bwd B{BATCH} L{LENGTH} D{DIM} mask{mask_ratio} {device}"
    benchmark.extra_info["impl"] = impl
    benchmark(gather_step(impl, device, mask_ratio)[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask_ratio", [0.5, 0.75])
@pytest.mark.parametrize("impl", IMPLS)
def test_restore_tokens(benchmark, device, mask_ratio, impl):
    benchmark.group = f"restore_tokens fwd+bwd B{BATCH} L{LENGTH} D{DIM} mask{mask_ratio} {device}"
    benchmark.extra_info["impl"] = impl
    benchmark(restore_step(impl, device, mask_ratio)[0])


# The MAE encoder's masked path end to end (patch embedding, gather, blocks; forward + backward),
# with its gather done by the op ("aubench") or by MAE's torch.gather with an expanded index
# ("torch.gather", swapped into the same encoder code). Tiny and ViT-B/16 encoders (MAE-FAU's
# `tiny` and `paper`); the gather is a small part of the encoder, so expect a ratio near 1.
ENCODERS = {"tiny": dict(name="vit_tiny_patch16_224", image_size=56, patch_size=4, batch=32,
                         kwargs=dict(embed_dim=64, depth=2, num_heads=2)),
            "vitb16": dict(name="vit_base_patch16_224", image_size=224, patch_size=16, batch=8, kwargs={})}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("impl", ["aubench", "torch.gather"])
def test_mae_encoder_masked_path(benchmark, monkeypatch, device, encoder, impl):
    import aubench.models.mae as mae

    spec = ENCODERS[encoder]
    torch.manual_seed(0)
    model = mae.MAEEncoder(spec["name"], spec["image_size"], spec["patch_size"], **spec["kwargs"]).to(device)
    images = torch.randn(spec["batch"], 3, spec["image_size"], spec["image_size"], device=device)
    ids_keep, _, _ = random_masking(spec["batch"], model.num_patches, 0.5,
                                    generator=torch.Generator(device).manual_seed(0))
    if impl == "torch.gather":
        monkeypatch.setattr(mae, "gather_tokens", lambda x, ids, validate=False: reference.gather_tokens(x, ids))
    benchmark.group = f"MAE encoder {encoder} fwd+bwd B{spec['batch']} mask0.5 {device}"
    benchmark.extra_info["impl"] = impl

    def step():
        model(images, ids_keep).sum().backward()
        synchronize(device)

    benchmark.pedantic(step, rounds=5 if encoder == "vitb16" else 50, warmup_rounds=2 if encoder == "vitb16" else 10)
