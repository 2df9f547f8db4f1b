"""Size and speed of `vivit` and `regnet-tf` on one window, and the RegNet embedding's share.

    python benchmarks/vivit_regnet_share.py --preset paper --json out.json

For each model: parameters (millions) of the whole network and of its RegNet embedding module;
FLOPs per frame of the whole network and of the embedding alone (aubench.bench.count_flops:
FlopCounterMode, attention on the math backend); inference frames per second of the
whole network on one window of `clip_len` frames (256 at `paper`) and the embedding's time on
the same frames (median of --iters rounds after --warmup, the two taking turns in each round),
so the share of the RegNet in compute and in time is measured side by side in one run. Random
images (speed does not depend on content); fp32.
"""
from __future__ import annotations

import argparse
import json

import torch

from aubench.bench import count_flops, count_params, device_name, timed_rounds
from aubench.engine.run import versions
from aubench.models import create_method, method_class

NUM_AUS = 12


def measure(name: str, preset_name: str, warmup: int, iters: int) -> dict:
    preset = method_class(name).presets[preset_name]
    torch.manual_seed(0)
    method = create_method(name, NUM_AUS, preset_name).eval()
    net, embedding = method.net, method.net.embedding
    windows = torch.randn(1, preset.clip_len, 3, preset.image_size, preset.image_size)
    frames = windows.flatten(0, 1)
    seconds = timed_rounds({"model": lambda: net(windows), "regnet": lambda: embedding(frames)}, warmup, iters)
    record = {
        "method": name, "preset": preset_name, "frames_per_window": preset.clip_len, "image_size": preset.image_size,
        "params_m": count_params(net) / 1e6, "regnet_params_m": count_params(embedding) / 1e6,
        "gflops_per_frame": count_flops(lambda: net(windows)) / preset.clip_len / 1e9,
        "regnet_gflops_per_frame": count_flops(lambda: embedding(frames)) / preset.clip_len / 1e9,
        "infer_frames_per_s": preset.clip_len / seconds["model"],
        "seconds_per_window": seconds["model"], "regnet_seconds_per_window": seconds["regnet"],
    }
    record["regnet_share_params"] = record["regnet_params_m"] / record["params_m"]
    record["regnet_share_flops"] = record["regnet_gflops_per_frame"] / record["gflops_per_frame"]
    record["regnet_share_time"] = seconds["regnet"] / seconds["model"]
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    records = [measure(name, args.preset, args.warmup, args.iters) for name in ("vivit", "regnet-tf")]
    for r in records:
        print(f"{r['method']:>9} {r['preset']}: {r['params_m']:.2f} M params (RegNet {100 * r['regnet_share_params']:.0f}%), "
              f"{r['gflops_per_frame']:.3f} GFLOPs/frame (RegNet {100 * r['regnet_share_flops']:.0f}%), "
              f"{r['infer_frames_per_s']:.1f} frames/s on one {r['frames_per_window']}-frame window "
              f"(RegNet {100 * r['regnet_share_time']:.0f}% of the time)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"what": "vivit and regnet-tf: size, FLOPs and CPU inference speed on one window, with the "
                               "RegNet embedding's share (benchmarks/vivit_regnet_share.py)",
                       "device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
                       "versions": versions(), "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
