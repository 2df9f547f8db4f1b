"""Runs `aubench <args>` in a torchrun worker, recording what the test needs to check.

Started by tests/test_engine_ddp.py as `torchrun ... tests/ddp_harness.py RECORD_DIR <aubench args>`:
- every shuffled DistributedSampler's epoch (the training batches' order) is appended to
  RECORD_DIR/rank<r>.jsonl as {"seed", "epoch", "size", "indices"}, so the test can check that
  the ranks drew disjoint shards of each epoch;
- with AUBENCH_TEST_KILL_RANK=r and AUBENCH_TEST_KILL_AT=n, rank r kills itself (SIGKILL, as
  an out-of-memory killer or a lost node would) at its n-th training forward pass, so the test
  can check that a run killed on one rank resumes.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from aubench.cli import main

record_dir = Path(sys.argv[1])
rank = int(os.environ.get("RANK", "0"))
sampler_iter = DistributedSampler.__iter__


def recorded_iter(self):
    indices = list(sampler_iter(self))
    if self.shuffle:
        with open(record_dir / f"rank{rank}.jsonl", "a") as log:
            log.write(json.dumps({"seed": self.seed, "epoch": self.epoch, "size": len(self.dataset),
                                  "indices": indices}) + "\n")
    return iter(indices)


DistributedSampler.__iter__ = recorded_iter

kill_rank = os.environ.get("AUBENCH_TEST_KILL_RANK")
if kill_rank is not None and int(kill_rank) == rank:
    ddp_forward = DistributedDataParallel.forward
    kill_at = int(os.environ["AUBENCH_TEST_KILL_AT"])
    calls = 0

    def forward_then_die(self, *args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return ddp_forward(self, *args, **kwargs)

    DistributedDataParallel.forward = forward_then_die

sys.exit(main(sys.argv[2:]))
