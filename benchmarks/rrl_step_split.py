"""Where one RRL pre-training step spends its time: the encoder, the Sinkhorn plan, the AU
attention maps, the rest.

    python benchmarks/rrl_step_split.py --preset paper --batch-size 8 --json out.json

One step = the online network on both views (forward and backward), the target on both views
(forward), the three losses, in both directions, as `RRL.training_step` and the engine do it.
Its parts, each timed alone on the same batch (median of --iters rounds after --warmup, the
parts taking turns in each round):
- encoder: the online encoder's forward and backward on the two views plus the target encoder's
  forward on them;
- sinkhorn: the two batched `aubench.ops.sinkhorn` calls of the relation loss, forward and
  backward (the plan differentiated, the default);
- maps: the AU attention maps of the two views (made once per view, shared by both networks);
- rest = step - encoder - sinkhorn - maps: the local network, pooling, projector and predictor,
  the losses and the remainder of the backward pass (no optimiser step).
Random images and a neutral face's landmarks (speed does not depend on content).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from aubench.bench import BENCH_AU_NAMES, device_name, synthetic_batch, timed_rounds
from aubench.engine.run import versions
from aubench.models.au_attention import au_attention_maps
from aubench.models.base import TrainState
from aubench.models.rrl import RRL, _stage_preset, relation_loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=sorted(RRL.presets))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    preset = _stage_preset(RRL.presets[args.preset], "pretrain")
    method = RRL(12, preset).train()
    method.set_training_data(BENCH_AU_NAMES[12], {"cooccurrence": np.eye(12) * 0.5 + 0.25})
    batch = synthetic_batch("frame", args.batch_size, 12, preset.image_size, landmarks=True, views=2)
    batch = {k: v for k, v in batch.items() if k not in ("label", "labeled")}
    state = TrainState(total_steps=100)

    def step():
        method.zero_grad(set_to_none=True)
        method.training_step(batch, state)["loss"].backward()

    def encoder():
        method.zero_grad(set_to_none=True)
        loss = sum(method.online.encoder(batch[view])[0].sum() for view in ("image", "image2"))
        loss.backward()
        with torch.no_grad():
            for view in ("image", "image2"):
                method.target.encoder(batch[view])

    # the relation loss's inputs, as one direction of the step makes them
    with torch.no_grad():
        o_g, o_loc = method._vectors(method.online, batch["image"], batch["landmarks"], {})
        t_g, t_loc = method._vectors(method.target, batch["image2"], batch["landmarks2"], {})
        map_size = tuple(method.online.encoder(batch["image"])[1].shape[-2:])
    o_loc.requires_grad_(True)
    o_g.requires_grad_(True)
    cfg = method.cfg

    def sinkhorn_part():
        for _ in range(2):   # two directions
            loss, _ = relation_loss(o_loc, t_loc, o_g, t_g, method.cost, cfg["sinkhorn_eps"], cfg["sinkhorn_iters"],
                                    True, cfg["sinkhorn_tol"])
            loss.backward()

    def maps_part():
        for view in ("landmarks", "landmarks2"):
            au_attention_maps(batch[view], method.au_names, (preset.image_size, preset.image_size), map_size)

    median = timed_rounds({"step": step, "encoder": encoder, "sinkhorn": sinkhorn_part, "maps": maps_part},
                          args.warmup, args.iters)
    t_step, t_encoder, t_sinkhorn, t_maps = (median[k] for k in ("step", "encoder", "sinkhorn", "maps"))
    t_rest = t_step - t_encoder - t_sinkhorn - t_maps
    record = {
        "preset": args.preset, "encoder": cfg["encoder"], "image_size": preset.image_size,
        "batch_size": args.batch_size, "device": device_name(torch.device("cpu")), "versions": versions(),
        "step_s": t_step, "encoder_s": t_encoder, "sinkhorn_s": t_sinkhorn, "maps_s": t_maps, "rest_s": t_rest,
        "share": {"encoder": t_encoder / t_step, "sinkhorn": t_sinkhorn / t_step, "maps": t_maps / t_step,
                  "rest": t_rest / t_step},
    }
    print(json.dumps(record, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
