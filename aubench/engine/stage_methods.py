"""The methods of a run's stages: each built the same way in every run, and a finished stage's
trained method found again.

A stage's method is seeded from (seed, stage index) only (planning.stage_seed; the first stage's
is the run's seed, as before stages existed), so a stage starts the same whether or not the run
was resumed before it; it is initialised with the --pretrained parts it loads (the first stage
from an aubench checkpoint when that is given), a later stage also from its init_from stage; its
frozen parts are frozen and the earlier stages it reads (frozen inputs) attached.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from aubench.engine.checkpoint import load_model_state, read_weights_file
from aubench.engine.config import RunConfig
from aubench.engine.data_access import RunData
from aubench.engine.device import seed_everything
from aubench.engine.distributed import DistEnv, sync_batchnorm
from aubench.engine.planning import CHECKPOINT_PART, part_sources, stage_seed, with_weights
from aubench.engine.run_files import stage_file_name
from aubench.engine.state import RunCheckpoints
from aubench.errors import UserError
from aubench.models.backbones import WeightsError
from aubench.models.base import AUMethod, Stage


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, eval mode (the engine keeps it there while the stage trains)."""
    module.requires_grad_(False)
    return module.eval()


def train_mode(method: nn.Module, frozen: list[nn.Module]) -> None:
    """Train mode for a stage's method, eval mode for the parts it keeps frozen."""
    method.train()
    for module in frozen:
        module.eval()


class BuiltStage(NamedTuple):
    method: AUMethod
    initialisation: str              # what it starts from, in words (a result's "initialisation")
    frozen_modules: list[nn.Module]  # its parts kept frozen (in eval mode) while it trains


class StageMethods:
    """Builds the methods of the stages of one run (`config` resolved: aubench.engine.planning)."""

    def __init__(self, method_cls: type[AUMethod], config: RunConfig, data: RunData, stages: list[Stage],
                 label_statistics: dict[str, Any], class_weights: torch.Tensor, env: DistEnv,
                 checkpoints: RunCheckpoints):
        self.method_cls, self.config, self.data, self.stages = method_cls, config, data, stages
        self.label_statistics, self.class_weights, self.env = label_statistics, class_weights, env
        self.checkpoints = checkpoints

    @property
    def part_weights(self) -> dict[str, str]:
        """The --pretrained sources by part that stages' methods load (an aubench checkpoint aside)."""
        return part_sources(self.config)

    def initialisation_text(self) -> str:
        """The run's --pretrained sources as its result's "initialisation" gives them, e.g.
        "backbone: timm:resnet18.a1_in1k (sha256 1a2b3c4d...)" (parts joined by "; ")."""
        if not self.config.pretrained:
            return "random (no --pretrained)"
        return "; ".join(f"{part}: {source} (sha256 {self.config.pretrained_weights[part]['sha256'][:8]}...)"
                         for part, source in self.config.pretrained.items())

    def index(self, name: str) -> int:
        """The index of stage `name`."""
        names = [stage.name for stage in self.stages]
        if name not in names:
            raise ValueError(f"{self.config.method} has no stage {name!r} (stages: {', '.join(names)})")
        return names.index(name)

    def stage_class_weights(self, stage: Stage) -> torch.Tensor | None:
        return self.class_weights if stage.uses_labels else None

    def build(self, index: int, trained: dict[str, AUMethod], restoring: bool = False) -> BuiltStage:
        """The method of stage `index`, built the same way in every run: seeded from (seed,
        stage), initialised (with the --pretrained parts it loads, the first stage from an
        aubench checkpoint when that is given; a later one also from its init_from stage, unless
        `restoring`, when its checkpoint holds the weights), its frozen parts
        frozen, its frozen inputs attached. `trained`: earlier stages' methods, by name."""
        stage = self.stages[index]
        seed = stage_seed(self.config.seed, index)
        seed_everything(seed)  # same initial weights on every rank
        class_weights = self.stage_class_weights(stage)
        if index == 0:
            method, initialisation = self._first_method(stage, class_weights)
        else:
            method = self.new_method(stage, class_weights, self.part_weights)
            initialisation = "random"
            if stage.init_from and not restoring:
                report = method.init_from_stage(stage.init_from, trained[stage.init_from])
                details = ", ".join(f"{k} {v}" for k, v in report.items())
                initialisation = f"from {stage.init_from}" + (f": {details}" if details else "")
        frozen_modules = []
        for name in stage.frozen:
            try:
                frozen_modules.append(freeze(method.get_submodule(name)))
            except AttributeError:
                raise ValueError(f"{self.config.method} stage {stage.name!r} freezes {name!r}, "
                                 f"which is not a submodule of its method") from None
        method.frozen_inputs = {name: freeze(trained[name]) for name in stage.frozen_inputs}
        seed_everything(seed + 1000 * self.env.rank)  # per-rank randomness from here on
        return BuiltStage(method, initialisation, frozen_modules)

    def new_method(self, stage: Stage, class_weights: torch.Tensor | None,
                   weights: dict[str, str] | None = None) -> AUMethod:
        """Stage `stage`'s method, fresh; `weights`: the --pretrained sources by part it loads."""
        try:
            method = self.method_cls(self.data.num_aus, with_weights(stage.preset, weights), class_weights)
        except WeightsError as err:
            raise UserError(f"--pretrained {err}") from None
        method.preset = stage.preset
        method.set_training_data(self.data.au_names, self.label_statistics)
        if self.config.sync_bn and self.env.distributed:
            method = sync_batchnorm(method)
        if self.config.channels_last:
            method = method.to(memory_format=torch.channels_last)
        return method.to(self.env.device)

    def _first_method(self, stage: Stage, class_weights: torch.Tensor | None) -> tuple[AUMethod, str]:
        """The first stage's method with its --pretrained parts, or all of it from an aubench
        checkpoint (planning.resolve_pretrained's CHECKPOINT_PART); and the run's initialisation_text."""
        path = (self.config.pretrained or {}).get(CHECKPOINT_PART)
        if path is None:
            return self.new_method(stage, class_weights, self.part_weights), self.initialisation_text()
        try:
            payload = read_weights_file(path)
        except UserError as err:
            raise UserError(f"--pretrained {err}") from None
        method = self.new_method(stage, class_weights)
        self.checkpoints.check(payload, path, same_run=False)
        load_model_state(method, payload.get("model", {}), f"--pretrained {path}")
        return method, self.initialisation_text()

    def load_final(self, index: int) -> AUMethod:
        """The trained method of finished stage `index`, from its final-weights file."""
        stage = self.stages[index]
        path = self.checkpoints.out / stage_file_name(stage.name)
        if not path.is_file():
            raise UserError(f"--resume: {path} (the final weights of stage {stage.name!r}) is missing; "
                            f"use --overwrite instead of --resume to train the run again")
        payload = self.checkpoints.load_weights(path, self.env.device)
        method = self.new_method(stage, self.stage_class_weights(stage))
        load_model_state(method, payload["model"], path)
        return method

    def needed(self, first: int, restoring: bool) -> set[str]:
        """Names of the stages before `first` whose trained methods the stages from `first` on
        read (frozen inputs, init_from); when `restoring` stage `first` from its checkpoint, its
        own init_from is not needed (the checkpoint holds its weights)."""
        names = set()
        for i, stage in enumerate(self.stages[first:], first):
            names.update(stage.frozen_inputs)
            if stage.init_from and not (restoring and i == first):
                names.add(stage.init_from)
        return names & {stage.name for stage in self.stages[:first]}

    def trained_method(self, name: str, held: dict[str, AUMethod], stage_method: Callable[[str], AUMethod],
                       keep: dict[str, AUMethod]) -> AUMethod:
        """The trained method of finished stage `name`: one of `held` (by name), else loaded from
        its final-weights file; its own frozen inputs attached as in training (`stage_method`
        finds each). Kept in `keep` for the next test condition."""
        method = held[name] if name in held else self.load_final(self.index(name))
        missing = [source for source in self.stages[self.index(name)].frozen_inputs
                   if source not in method.frozen_inputs]
        if missing:  # loaded from its file: its own frozen inputs are not attached yet
            method.frozen_inputs = {**method.frozen_inputs,
                                    **{source: freeze(stage_method(source)) for source in missing}}
        keep[name] = method
        return method
