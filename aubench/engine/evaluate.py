"""`aubench train` and `aubench evaluate` (and the demo): runs planned, checked, trained, tested, written.

`train_run` trains one (method, fold) into one directory; `evaluate_runs` trains every (method,
label ratio, fold) of a request under OUT/runs and writes one result JSON per (method, fold,
protocol, test condition) under OUT/results. A run is trained once and tested under every test
occlusion condition; resuming tests the conditions not yet tested with the trained checkpoint.
Everything is checked before anything trains: the settings of every method, and what OUT
already holds (refused unless resume or overwrite; see the `evaluate` help).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aubench.data.occlusion import condition_name
from aubench.engine.identity import (MissingKey, differences_text, identity_differences, need,
                                     result_identity)
from aubench.engine.trainer import (CHECKPOINT_NAME, RunConfig, check_stages_build, clear_run_files,
                                    config_identity, kept_run_files, parse_occlusion_option, resolve_precision,
                                    resolve_preset, result_file_name, run_stages)
from aubench.errors import UserError


@dataclass
class EvaluateRequest:
    """One evaluation. `run` holds the settings every run shares (data, preset, epochs, seed,
    train occlusion, resume / overwrite ...); its method, fold, label_ratio and out are set per run."""

    methods: list[str]                 # registered names, or ["all"]
    run: RunConfig
    out: str
    folds: list[int] = field(default_factory=lambda: [1, 2, 3])
    label_ratios: list[float] = field(default_factory=lambda: [1.0])
    test_occlusions: list[str] = field(default_factory=lambda: ["none"])
    bench_batch_size: int = 4          # batch of the size / speed measurement


def resolve_methods(names: list[str]) -> list[str]:
    """Registered method names ("all": every one); UserError naming an unknown one."""
    from aubench.models import available_methods

    known = available_methods()
    if names == ["all"]:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}; available methods: {', '.join(known)}")
    return names


def check_data_and_folds(path: str, folds: list[int]):
    """The opened dataset file, once every fold is known to be in it."""
    from aubench.engine.data_access import open_dataset_file

    file = open_dataset_file(path)
    bad = [k for k in folds if not 1 <= k <= file.num_folds]
    if bad:
        raise UserError(f"--fold {bad[0]} is out of range: {path} has folds 1..{file.num_folds}")
    return file


def condition_names(texts: list[str]) -> list[str]:
    """Condition names of --test-occlusion values; UserError when two are the same condition."""
    names = [condition_name(parse_occlusion_option("--test-occlusion", text)) for text in texts]
    if len(set(names)) != len(names):
        raise UserError(f"--test-occlusion {','.join(texts)}: two values are the same condition ({', '.join(names)})")
    return names


def _run_name(result: dict[str, Any]) -> str:
    """The protocol with the result's occlusion conditions, as in its file name ("full_test-patches0.5")."""
    from aubench.engine.run import protocol_name

    return protocol_name(result["label_ratio"], result["occlusion"]["train"], result["occlusion"]["test"])


def _print_result(result: dict[str, Any], prefix: str) -> None:
    print(f"{prefix}: mean F1 {100 * result['mean_f1']:5.1f} "
          f"(all-positive {100 * result['metrics']['all_positive_mean_f1']:5.1f})", flush=True)


def train_run(config: RunConfig, test_occlusions: list[str] = ("none",)) -> list[Path]:
    """`aubench train`: train one method on one fold into config.out (the Trainer refuses an OUT
    holding another run unless resume / overwrite), test it under each condition, write
    result.json (no test occlusion) / result_test-<condition>.json beside the checkpoint."""
    from aubench.engine.distributed import setup_distributed
    from aubench.engine.run import train_and_evaluate
    from aubench.files import write_json_atomic

    resolve_methods([config.method])
    check_data_and_folds(config.data, [config.fold])
    names = condition_names(list(test_occlusions))
    env = setup_distributed(config.device)
    results = train_and_evaluate(config, test_occlusions=test_occlusions)
    paths = [Path(config.out) / result_file_name(name) for name in names]
    if env.is_main:
        for path, result in zip(paths, results):
            write_json_atomic(path, result)
            m = result["metrics"]
            print(f"{config.method} fold {config.fold} {_run_name(result)}: mean F1 {100 * m['mean_f1']:.1f} "
                  f"(all-positive {100 * m['all_positive_mean_f1']:.1f}); per AU: "
                  + ", ".join(f"{au} {100 * v:.1f}" for au, v in m["f1"].items()))
        print(f"results: {', '.join(map(str, paths))}   checkpoint: {Path(config.out) / CHECKPOINT_NAME}")
    return paths


@dataclass
class _Unit:
    """One trained run of an evaluation: (method, label ratio, fold), tested under every condition."""

    config: RunConfig
    identity: dict                      # config_identity of the request
    results: dict[str, Path]            # test condition name -> result file


def _stored_identity(path: Path) -> tuple[dict, str]:
    """(identity, test condition name) of a stored result."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        identity = result_identity(result)
        # A result made before occlusion conditions existed was tested without occlusion.
        test = need(result, "occlusion", "test") if "occlusion" in result else "none"
        return identity, test
    except (OSError, ValueError) as err:
        raise UserError(f"--resume: {path} cannot be read ({err}); remove it or use --overwrite") from None
    except MissingKey as err:
        raise UserError(f"--resume: {path} has no '{err.path}'; remove it or use --overwrite") from None


def evaluate_runs(request: EvaluateRequest) -> list[Path]:
    """Train and test every (method, label ratio, fold) of the request; the result files written
    or kept, in order (method, label ratio, fold, test condition)."""
    from aubench.bench import benchmark_method
    from aubench.engine.distributed import setup_distributed
    from aubench.engine.run import protocol_name, train_and_evaluate
    from aubench.files import write_json_atomic
    from aubench.models import method_class
    from aubench.models.base import check_image_size

    template = request.run
    methods = resolve_methods(request.methods)
    file = check_data_and_folds(template.data, request.folds)
    train = condition_name(parse_occlusion_option("--train-occlusion", template.train_occlusion))
    tests = dict(zip(condition_names(request.test_occlusions), request.test_occlusions))  # name -> text
    protocols = [protocol_name(r, train) for r in request.label_ratios]
    if len(set(protocols)) != len(protocols):
        raise UserError(f"--label-ratios {','.join(map(str, request.label_ratios))}: two ratios give the same "
                        f"protocol name ({', '.join(protocols)})")
    env = setup_distributed(template.device)
    precision = resolve_precision(template.precision, env.device)
    fingerprint = file.fingerprint()
    root = Path(request.out)
    units = []
    for method in methods:
        for ratio, protocol in zip(request.label_ratios, protocols):
            for fold in request.folds:
                config = replace(template, method=method, fold=fold, label_ratio=ratio,
                                 out=str(root / "runs" / method / protocol / f"fold{fold}"))
                cls = method_class(method)
                preset = resolve_preset(cls, config)
                stages = run_stages(cls, preset)
                for stage in stages:
                    check_image_size(cls, stage.preset)
                check_stages_build(cls, file.num_aus, stages)
                results = {test: root / "results" / f"{method}_fold{fold}_{protocol_name(ratio, train, test)}.json"
                           for test in tests}
                units.append(_Unit(config, config_identity(config, preset, stages, fingerprint, precision), results))

    def held(u: _Unit) -> list[str]:
        return ([str(p.relative_to(root)) for p in u.results.values() if p.exists()]
                + [f"{Path(u.config.out).relative_to(root)}/{name}" for name in kept_run_files(u.config.out)])

    there = [u for u in units if held(u)]
    if there and not (template.resume or template.overwrite):
        names = [held(u)[0] for u in there]
        more = f" and {len(names) - 2} more" if len(names) > 2 else ""
        raise UserError(f"--out {root} already holds runs of this evaluation ({', '.join(names[:2])}{more}); pass "
                        f"--resume to keep those made with the same settings, or --overwrite to replace them")
    kept: set[Path] = set()
    if template.resume:
        for u in units:
            for test, path in u.results.items():
                if not path.is_file():
                    continue
                identity, stored_test = _stored_identity(path)
                diffs = identity_differences(identity, u.identity, "result")
                if stored_test != test:
                    diffs.append(f"occlusion.test: result {stored_test!r} vs now {test!r}")
                if diffs:
                    raise UserError(f"--resume: {path} was made with other settings ({differences_text(diffs)}); "
                                    f"use --overwrite instead of --resume to replace it, or another --out")
                kept.add(path)
    if template.overwrite and env.is_main:  # all at once: a rerun after a crash then finds only new runs
        for u in there:
            for path in u.results.values():
                path.unlink(missing_ok=True)
            clear_run_files(u.config.out)

    written = []
    bench: dict[str, dict] = {}
    for u in units:
        config = u.config
        label = f"{config.method:>10} fold {config.fold}"
        todo = {test: path for test, path in u.results.items() if path not in kept}
        if env.is_main:
            for test, path in u.results.items():
                if path in kept:
                    print(f"{label} {protocol_name(config.label_ratio, train, test):>10}: kept {path} "
                          f"(same settings)", flush=True)
        if todo:
            # A run killed in training, or trained but not tested under every condition, resumes.
            config = replace(config, resume=template.resume and (Path(config.out) / CHECKPOINT_NAME).is_file())
            if config.method not in bench:  # size and speed depend on the architecture only: once per method
                bench[config.method] = benchmark_method(
                    config.method, file.num_aus, template.preset, env.device, batch_size=request.bench_batch_size,
                    precision=template.precision, channels_last=template.channels_last, warmup=1, iters=3,
                    image_size=template.image_size)
            results = train_and_evaluate(config, bench[config.method], test_occlusions=[tests[t] for t in todo])
            for (test, path), result in zip(todo.items(), results):
                if env.is_main:
                    write_json_atomic(path, result)
                    _print_result(result, f"{label} {_run_name(result):>10}")
        written += list(u.results.values())
    return written
