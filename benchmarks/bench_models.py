"""Size and inference speed of every method's `paper` preset (its last stage's network, the one
tested) beside a plain timm ResNet-50.

Each group ("inference <method>-paper <frames>x<size>px") holds the method (impl "aubench")
and a ResNet-50 classifier on the same number of frames (impl "resnet50"), so
benchmarks/summary.py prints resnet50-time / method-time. extra_info carries parameter counts
(millions) and FLOPs per frame. CPU-friendly: one small batch, few rounds.
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import aubench.models  # noqa: F401  (registers the methods)
from aubench.bench import BENCH_AU_NAMES, count_params, flops_per_frame, frames_in, synthetic_batch
from aubench.models import available_methods, create_method, method_class

NUM_AUS = 12
CLIPS_OR_FRAMES = 1  # batch size: one clip (clip methods) or frames (frame methods)
ROUNDS = 3


def _setup(name: str):
    cls = method_class(name)
    # a method that trains in stages is measured as it is tested: its last stage's network
    preset = cls.stages(cls.presets["paper"])[-1].preset
    torch.manual_seed(0)
    method = create_method(name, NUM_AUS, preset, None).eval()
    # what training gives a method before it predicts (RRL's attention maps depend on the AUs)
    method.set_training_data(BENCH_AU_NAMES[NUM_AUS], {"cooccurrence": np.eye(NUM_AUS),
                                                       "au_rate": np.full(NUM_AUS, 0.5)})
    batch_size = CLIPS_OR_FRAMES if cls.input_kind == "clip" else max(CLIPS_OR_FRAMES, preset.clip_len)
    batch = synthetic_batch(cls.input_kind, batch_size, NUM_AUS, preset.image_size, preset.clip_len,
                            landmarks=method.uses_landmarks)
    return method, batch, preset


@pytest.mark.parametrize("name", available_methods())
@pytest.mark.parametrize("impl", ["aubench", "resnet50"])
def test_inference_vs_resnet50(benchmark, name, impl):
    method, batch, preset = _setup(name)
    frames = frames_in(batch)
    benchmark.group = f"inference {name}-paper {frames}x{preset.image_size}px"
    benchmark.extra_info["impl"] = impl
    if impl == "aubench":
        benchmark.extra_info["params_m"] = count_params(method.inference_model()) / 1e6
        benchmark.extra_info["gflops_per_frame"] = flops_per_frame(method, batch) / 1e9
        run = lambda: method.predict(batch)  # noqa: E731
    else:
        baseline = timm.create_model("resnet50", pretrained=False, num_classes=NUM_AUS).eval()
        images = torch.randn(frames, 3, preset.image_size, preset.image_size)
        benchmark.extra_info["params_m"] = count_params(baseline) / 1e6

        @torch.no_grad()
        def run():
            return torch.sigmoid(baseline(images))
    out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert out.shape[-1] == NUM_AUS
