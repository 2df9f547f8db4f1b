"""Size and speed of a method, measured the way timm's benchmark.py reports models.

- params: millions of parameters of the inference network (`method.inference_model()`), and of
  everything trained (students, teachers, heads) beside it; for a method that trains in stages,
  of its last stage's method (the one tested), or of the stage asked for (a leaderboard row,
  Stage.row: the record's "method" is then the row's, "<method>-<row>");
- inference throughput: frames per second of `method.predict` on a synthetic batch, after
  warm-up iterations, CUDA synchronised around the timed loop; batch size, precision and
  channels-last are part of the record;
- train throughput: frames per second of a full optimiser step (forward, losses, backward,
  optimiser) through the engine's own step code;
- FLOPs per frame: torch.utils.flop_counter.FlopCounterMode over one `predict` call, divided
  by the frames in the batch (FLOPs = 2 x multiply-accumulates). Attention runs on PyTorch's
  math backend while it is counted: the counter sees no FLOPs in the fused CPU attention
  kernel, so ViT and Swin attention would otherwise count on a GPU and vanish on a CPU.
Images are random: speed does not depend on content. A clip method's batch holds batch_size
clips of preset.clip_len frames; throughput counts frames. When the measured stage trains under
the run's training occlusion (the preset's train_occlusion, or the one given; Stage.occluded),
the batch carries an "occlusion" mask drawn for that condition, as training batches do, so a
method whose cost depends on the mask is measured under it; the record names the condition.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from aubench.data.occlusion import condition_name, occlusion_mask
from aubench.engine.device import autocast_context, resolve_precision
from aubench.engine.optim import build_optimizer
from aubench.engine.planning import condition_text, parse_occlusion_option
from aubench.engine.stage_methods import freeze
from aubench.errors import UserError
from aubench.models.base import (SINGLE_STAGE, AUMethod, Preset, TrainState, check_image_size, check_stages,
                                 create_method, method_class, row_method_name)


# AU names of a measured batch with this many AUs (BP4D's 12, DISFA's 8), for methods whose
# networks depend on which AUs they detect (RRL's attention maps)
BENCH_AU_NAMES = {12: ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"],
                  8: ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]}


def face_template(image_size: int) -> torch.Tensor:
    """(68, 2) landmarks of a neutral synthetic face filling a square image of `image_size` px."""
    import numpy as np

    from datasets_tools import face_render

    identity = face_render.make_identity(np.random.default_rng(0))
    canonical = face_render.face_geometry(identity, np.zeros(len(face_render.RENDERED_AUS)))["landmarks"]
    return torch.tensor(image_size / 2 + canonical * image_size * 0.4, dtype=torch.float32)


def synthetic_batch(input_kind: str, batch_size: int, num_aus: int, image_size: int, clip_len: int = 1,
                    device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                    occlusion: tuple[str, float] | None = None, landmarks: bool = False,
                    views: int = 1) -> dict[str, torch.Tensor]:
    """A batch shaped like aubench.data's (random images, random 0/1 labels); with `occlusion`
    (a parsed condition) also "occlusion", one random mask per frame, bool (B,H,W) ((B,n,H,W)
    for clips), True = occluded; with `landmarks` a neutral face's 68 points for every frame;
    with views = 2 a second view ("image2", "landmarks2")."""
    g = generator or torch.Generator().manual_seed(0)
    if input_kind == "clip":
        n = clip_len
        image = torch.randn(batch_size, n, 3, image_size, image_size, generator=g)
        label = (torch.rand(batch_size, n, num_aus, generator=g) < 0.3).float()
        key = torch.full((batch_size,), n // 2, dtype=torch.int64)
        labeled = torch.zeros(batch_size, n, dtype=torch.bool)
        labeled[:, n // 2] = True
        label[~labeled] = -1.0
        index = torch.arange(batch_size * n, dtype=torch.int64).reshape(batch_size, n)
        batch = {"image": image, "label": label, "labeled": labeled, "key_position": key, "index": index}
    else:
        batch = {"image": torch.randn(batch_size, 3, image_size, image_size, generator=g),
                 "label": (torch.rand(batch_size, num_aus, generator=g) < 0.3).float(),
                 "index": torch.arange(batch_size, dtype=torch.int64)}
    if occlusion is not None:
        frames = batch["image"].shape[:-3]
        masks = [occlusion_mask(*occlusion, image_size, image_size, generator=g) for _ in range(frames.numel())]
        batch["occlusion"] = torch.stack(masks).reshape(*frames, image_size, image_size)
    if landmarks:
        batch["landmarks"] = face_template(image_size).expand(*batch["image"].shape[:-3], 68, 2).clone()
    if views == 2:
        batch["image2"] = torch.randn(batch["image"].shape, generator=g)
        if landmarks:
            batch["landmarks2"] = batch["landmarks"].clone()
    return {k: v.to(device) for k, v in batch.items()}


def frames_in(batch: dict[str, torch.Tensor]) -> int:
    image = batch["image"]  # (B,3,H,W) or (B,n,3,H,W): a batch without labels counts too
    return int(image.shape[0] * (image.shape[1] if image.dim() == 5 else 1))


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _channels_last(batch: dict[str, torch.Tensor], enabled: bool) -> dict[str, torch.Tensor]:
    if enabled and batch["image"].dim() == 4:
        return {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}
    return batch


@torch.no_grad()
def count_flops(fn) -> int:
    """FLOPs of one call of `fn()` (attention on the math backend: see the module docstring)."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


def flops_per_frame(method: AUMethod, batch: dict[str, torch.Tensor]) -> float:
    method.eval()
    return count_flops(lambda: method.predict(batch)) / frames_in(batch)


@torch.no_grad()
def inference_throughput(method: AUMethod, batch: dict[str, torch.Tensor], precision: str, warmup: int, iters: int
                         ) -> dict[str, float]:
    device = batch["image"].device
    method.eval()
    with autocast_context(device, precision):
        for _ in range(warmup):
            method.predict(batch)
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            method.predict(batch)
        _sync(device)
    elapsed = time.perf_counter() - start
    return {"frames_per_s": frames_in(batch) * iters / elapsed, "ms_per_batch": 1000 * elapsed / iters}


def train_throughput(method: AUMethod, batch: dict[str, torch.Tensor], preset: Preset, precision: str, warmup: int,
                     iters: int, stage: str = SINGLE_STAGE) -> dict[str, float]:
    device = batch["image"].device
    method.train()
    optimizer = build_optimizer(method, preset)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = TrainState(epochs=1, stage=stage)

    def step():
        with autocast_context(device, precision):
            loss = method.training_step(batch, state)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        state.step += 1

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    return {"frames_per_s": frames_in(batch) * iters / elapsed, "ms_per_batch": 1000 * elapsed / iters}


def benchmark_method(name: str, num_aus: int = 12, preset: str | Preset = "paper", device: str | torch.device = "cpu",
                     batch_size: int = 8, precision: str = "auto", channels_last: bool = False, warmup: int = 2,
                     iters: int = 5, train: bool = True, image_size: int | None = None,
                     model_overrides: dict[str, Any] | None = None, seed: int = 0, stage: str | None = None,
                     train_occlusion: str | None = None, au_names: list[str] | None = None) -> dict[str, Any]:
    """Params, FLOPs per frame and inference / train throughput of a freshly built method: of
    the stage named `stage` (default: the last, the one tested), built with its preset and its
    frozen inputs. `train_occlusion`: a condition as the command line writes it, None = the
    preset's; the batch carries its mask when the stage trains under it. `au_names`: the AUs
    (default: BP4D's 12 or DISFA's 8 when num_aus says so)."""
    try:
        cls = method_class(name)
    except KeyError as err:
        raise UserError(err.args[0]) from None
    if isinstance(preset, str):
        if preset not in cls.presets:
            raise UserError(f"method {name!r} has no preset {preset!r}; presets: {', '.join(sorted(cls.presets))}")
        preset_obj = cls.presets[preset]
    else:
        preset_obj = preset
    if image_size is not None:
        preset_obj = Preset(**{**preset_obj.__dict__, "image_size": image_size})
    if model_overrides:  # before the stages, which are derived from the model settings
        preset_obj = Preset(**{**preset_obj.__dict__, "model": {**preset_obj.model, **model_overrides}})
    occlusion = parse_occlusion_option("--train-occlusion", train_occlusion or preset_obj.train_occlusion)
    preset_obj = Preset(**{**preset_obj.__dict__, "train_occlusion": condition_text(occlusion)})
    # A method that trains in stages is measured as it is tested: its last stage's network, or
    # the stage asked for (a leaderboard row).
    stages = check_stages(name, list(cls.stages(preset_obj)))
    by_name = {s.name: s for s in stages}
    if stage is not None and stage not in by_name:
        raise UserError(f"method {name!r} has no stage {stage!r} (stages: {', '.join(by_name)})")
    measured = by_name[stage] if stage is not None else stages[-1]
    preset_obj = measured.preset
    check_image_size(cls, preset_obj)
    if train and batch_size < 2:
        raise UserError(f"--batch-size {batch_size}: a train step needs at least 2 samples (batch norm); "
                        f"use --no-train to time inference alone")
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    torch.manual_seed(seed)

    def build(stage_name: str) -> AUMethod:
        """A stage's method with the earlier stages it reads (a teacher) attached, frozen, as in
        training; speed does not depend on their weights."""
        built = create_method(name, num_aus, by_name[stage_name].preset, None).to(device)
        built.set_training_data(list(au_names or BENCH_AU_NAMES.get(num_aus, [f"AU{k + 1}" for k in range(num_aus)])),
                                {"cooccurrence": np.eye(num_aus), "au_rate": np.full(num_aus, 0.5)})
        built.frozen_inputs = {source: freeze(build(source)) for source in by_name[stage_name].frozen_inputs}
        return built

    method = build(measured.name)
    for part in measured.frozen:  # the stage's frozen parts, as in training
        freeze(method.get_submodule(part))
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    occlusion = occlusion if measured.occluded else None
    batch = _channels_last(synthetic_batch(cls.input_kind, batch_size, num_aus, preset_obj.image_size,
                                           preset_obj.clip_len, device, occlusion=occlusion,
                                           landmarks=method.uses_landmarks, views=method.views), channels_last)
    record: dict[str, Any] = {
        "method": row_method_name(name, measured), "preset": preset_obj.name, "stage": measured.name,
        "model_overrides": dict(model_overrides or {}),
        "input_kind": cls.input_kind, "occlusion": condition_name(occlusion),
        "image_size": preset_obj.image_size, "clip_len": preset_obj.clip_len, "batch_size": batch_size,
        "frames_per_batch": frames_in(batch), "precision": precision, "channels_last": channels_last,
        "device": device_name(device), "cpu": cpu_info(), "warmup": warmup, "iters": iters,
        "params_m": count_params(method.inference_model()) / 1e6,
        "train_params_m": count_params(method) / 1e6,
        "gflops_per_frame": flops_per_frame(method, batch) / 1e9,
    }
    infer = inference_throughput(method, batch, precision, warmup, iters)
    record["infer_frames_per_s"] = infer["frames_per_s"]
    record["infer_ms_per_batch"] = infer["ms_per_batch"]
    if train:
        # a stage that uses no labels trains on batches without them, as in the engine
        train_batch = batch if measured.uses_labels else {k: v for k, v in batch.items() if k not in ("label", "labeled")}
        tr = train_throughput(method, train_batch, preset_obj, precision, warmup=max(1, warmup // 2),
                              iters=max(1, iters // 2), stage=measured.name)
        record["train_frames_per_s"] = tr["frames_per_s"]
        record["train_ms_per_batch"] = tr["ms_per_batch"]
    return record


def timed_rounds(parts: dict, warmup: int, iters: int) -> dict:
    """Median seconds of each part, the parts run in turn in every round so that a slow spell of
    the machine touches all of them alike."""
    for _ in range(warmup):
        for fn in parts.values():
            fn()
    times = {name: [] for name in parts}
    for _ in range(iters):
        for name, fn in parts.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# Variables that make torch, oneDNN and MKL run narrower vector kernels than the CPU has (e.g.
# ATEN_CPU_CAPABILITY=avx2 on an AVX-512 machine): recorded, since they change speed and, through
# float order, training trajectories.
CPU_KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_brand() -> str:
    """The CPU's model name ("AMD EPYC 7B13", "Intel(R) Xeon(R) Processor"): /proc/cpuinfo on
    Linux, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict[str, Any]:
    """The CPU a figure comes from: brand, the vector kernels torch dispatches to ("capability":
    AVX2, AVX512, ...; what the CPU has, unless a variable of CPU_KERNEL_VARIABLES narrows it),
    threads, the variables set, and the torch version. CPU figures depend on all of them: speed
    directly, F1 through the float order of the kernels."""
    return {"brand": cpu_brand(), "capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "kernel_variables": {name: os.environ[name] for name in CPU_KERNEL_VARIABLES if os.environ.get(name)}}


def cpu_text(info: dict[str, Any] | None = None) -> str:
    """cpu_info in one line: "Intel(R) Xeon(R) Processor, AVX512, 2 threads"."""
    info = cpu_info() if info is None else info
    text = f"{info['brand']}, {info['capability']}, {info['threads']} threads"
    forced = info.get("kernel_variables") or {}
    return text + "".join(f", {name}={value}" for name, value in forced.items())


def device_name(device: torch.device) -> str:
    """The device of a result or a measurement: the GPU's name, or the CPU's brand, kernel
    capability and threads (cpu_text)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_text()})"
