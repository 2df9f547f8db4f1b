"""`aubench train` and `aubench evaluate` (and the demo): runs planned, checked, trained, tested, written.

`train_run` trains one (method, fold) into one directory; `evaluate_runs` trains every (method,
label ratio, fold: by default every fold of the data file) of a request under OUT/runs and writes one result JSON per (method, fold,
protocol, test condition) under OUT/results; a method whose stages are leaderboard rows
(Stage.row) gets one per row instead, named as the method "<method>-<row>". A run is trained
once and tested under every test occlusion condition; resuming tests the (row, condition) pairs
not yet tested with the trained checkpoint and the final weights of the earlier stages. The
training occlusion, and so the protocol name, is each method's own: --train-occlusion, else its
preset's. Each method's preset is resolved for the data file's dataset (`paper` -> `paper-disfa`
on DISFA where the method has one) and results record the name used. `aubench evaluate --dry-run`
(aubench.engine.dry_run) builds the runs and trains none.
Everything is checked before anything trains: the settings of every method, and what OUT
already holds (refused unless resume or overwrite; see the `evaluate` help).
Every result JSON has its per-frame predictions beside it (<stem>.predictions.npz,
aubench.engine.predictions; with --validation also <stem>.validation.predictions.npz); resuming
keeps a result only with its predictions files unchanged (the sha256 the result records), and
tests again one whose file is missing or altered. --validation, --select and --thresholds
(docs/validation.md) are part of each run's settings.
With a smoothing filter (--smooth, aubench.engine.postprocess) every result, kept ones included,
is also written smoothed beside itself; replacing a result (write_result) removes the smoothed
ones made from it.
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aubench.data.occlusion import condition_name
from aubench.engine.config import RunConfig
from aubench.engine.data_access import RunData, open_pretrain_data, validation_subjects
from aubench.engine.device import resolve_precision
from aubench.engine.identity import (MissingKey, differences_text, identity_differences, need,
                                     result_identity)
from aubench.engine.memory import check_batch_fits, out_of_memory_stops
from aubench.engine.planning import (check_pretraining, check_selection, check_stage_preset, check_stages_build,
                                     check_sync_bn, config_identity, parse_occlusion_option, resolve_preset,
                                     run_stages, train_occlusion)
from aubench.engine.run_files import CHECKPOINT_NAME, clear_run_files, kept_run_files, result_file_name
from aubench.engine.run_lock import run_folder_lock, run_folder_locks
from aubench.errors import UserError
from aubench.models.base import SINGLE_STAGE, split_method, variant_settings


@dataclass
class EvaluateRequest:
    """One evaluation. `run` holds the settings every run shares (data, preset, epochs, seed,
    train occlusion, resume / overwrite ...); its method, fold, label_ratio and out are set per run."""

    methods: list[str]                 # registered names, or ["all"]
    run: RunConfig
    out: str
    folds: list[int] | None = None     # None: every fold of the data file
    label_ratios: list[float] = field(default_factory=lambda: [1.0])
    test_occlusions: list[str] = field(default_factory=lambda: ["none"])
    bench_batch_size: int = 4          # batch of the size / speed measurement
    smoothing: Any = None              # aubench.engine.postprocess.Smoothing: also write smoothed results
    # size / speed records by (method, variant, tested stage): evaluate_runs measures those missing
    # and adds them here, so a caller can measure once on an idle machine (measure_only) and train
    # elsewhere (the demo's parallel runs)
    benches: dict = field(default_factory=dict)
    measure_only: bool = False         # measure the size / speed of every run still to do, train nothing
    print_plan: bool = False           # print the plan before training (`aubench evaluate`; plan_lines)
    bench_figures: list[dict] = field(default_factory=list)  # `aubench bench` records the plan estimates from


def resolve_methods(names: list[str]) -> list[str]:
    """Registered method names, or a method's named variant ("rrl:global"); "all": every method.
    UserError naming an unknown one."""
    from aubench.models import available_methods, method_class
    from aubench.models.base import split_method, variant_settings

    known = available_methods()
    if names == ["all"]:
        return known
    for spec in names:
        name, variant = split_method(spec)
        if name not in known:
            raise UserError(f"unknown method {name!r}; available methods: {', '.join(known)}")
        try:
            variant_settings(method_class(name), variant)
        except ValueError as err:
            raise UserError(str(err)) from None
    return names


def check_data_and_folds(path: str, folds: list[int] | None):
    """The opened dataset file, once it is known to be labeled and to have every fold (None:
    every fold it has)."""
    from aubench.engine.data_access import open_labeled_file

    file = open_labeled_file(path)
    bad = [k for k in folds or [] if not 1 <= k <= file.num_folds]
    if bad:
        raise UserError(f"--fold {bad[0]} is out of range: {path} has folds 1..{file.num_folds}")
    return file


def file_folds(file, folds: list[int] | None) -> list[int]:
    """`folds`, or every fold of the opened data file when None."""
    return list(folds) if folds is not None else list(range(1, file.num_folds + 1))


DEFAULT_PRESET = "tiny"  # `train` / `evaluate` without --preset


def preset_line(methods: list[str], preset: str | None, dataset: str) -> str | None:
    """The line `train` / `evaluate` print about the preset: always without --preset (`preset`
    None: the default), and where `paper` resolves to a dataset's preset (paper-disfa ...);
    None otherwise. `methods`: resolved method specs (resolve_methods)."""
    from aubench.models import method_class
    from aubench.models.base import dataset_preset_name, split_method

    requested = preset or DEFAULT_PRESET
    used = {spec: dataset_preset_name(method_class(split_method(spec)[0]), requested, dataset) for spec in methods}
    if preset is None:
        return (f"[aubench] preset: {requested} (the default, a CPU-sized model, not comparable with the "
                f"papers; --preset paper for the paper's settings)")
    if all(name == requested for name in used.values()):
        return None
    return (f"[aubench] preset {requested} on {dataset}: "
            + ", ".join(f"{spec} {name}" for spec, name in used.items()))


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


def train_run(config: RunConfig, test_occlusions: list[str] = ("none",), smoothing=None) -> list[Path]:
    """_train_run while holding the lock of config.out (aubench.engine.run_lock; main process)."""
    with ExitStack() as locks:
        return _train_run(config, test_occlusions, smoothing, locks)


def _train_run(config: RunConfig, test_occlusions, smoothing, locks: ExitStack) -> list[Path]:
    """`aubench train`: train one method on one fold into config.out (the Trainer refuses an OUT
    holding another run unless resume / overwrite), test it under each condition, write
    result.json (no test occlusion) / result_test-<condition>.json beside the checkpoint; for a
    method with leaderboard rows result_<row>.json / result_<row>_test-<condition>.json per row;
    each with its predictions file (<stem>.predictions.npz) beside it; with `smoothing`
    (aubench.engine.postprocess.Smoothing) each also smoothed (<stem>_smooth-<name>.json)."""
    from aubench.engine.distributed import setup_distributed
    from aubench.engine.postprocess import smooth_results
    from aubench.engine.predictions import write_result
    from aubench.engine.run import result_row, train_and_evaluate

    resolve_methods([config.method])
    check_data_and_folds(config.data, [config.fold])
    condition_names(list(test_occlusions))
    env = setup_distributed(config.device)
    if env.is_main:
        locks.enter_context(run_folder_lock(config.out))
    results = train_and_evaluate(config, test_occlusions=test_occlusions)
    paths = [Path(config.out) / result_file_name(tested.result["occlusion"]["test"], result_row(tested.result))
             for tested in results]
    if env.is_main:
        for path, (result, predictions, validation) in zip(paths, results):
            write_result(path, result, predictions, validation)
            m = result["metrics"]
            print(f"{result['method']} fold {config.fold} {_run_name(result)}: mean F1 {100 * m['mean_f1']:.1f} "
                  f"(all-positive {100 * m['all_positive_mean_f1']:.1f}); per AU: "
                  + ", ".join(f"{au} {100 * v:.1f}" for au, v in m["f1"].items()))
        if smoothing is not None:
            paths += smooth_results(paths, smoothing)
        print(f"results: {', '.join(map(str, paths))}   checkpoint: {Path(config.out) / CHECKPOINT_NAME}")
    return paths


@dataclass
class _Unit:
    """One trained run of an evaluation: (method, label ratio, fold), each tested stage tested
    under every condition."""

    config: RunConfig
    identity: dict                      # config_identity of the request
    results: dict[tuple[str, str], Path]  # (tested stage, test condition name) -> result file
    names: dict[str, str]               # tested stage -> the method name of its results
    train: dict[str, str]               # tested stage -> its training occlusion condition name (trained_under)
    stages: list = field(default_factory=list)  # the run's stages (aubench.models.base.Stage), for the plan


def _stored_result(path: Path) -> tuple[dict, str, str, str | None, dict]:
    """(identity, test condition name, method, tested stage, the record) of a stored result."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        identity = result_identity(result)
        # A result made before occlusion conditions existed was tested without occlusion.
        test = need(result, "occlusion", "test") if "occlusion" in result else "none"
        # A result made before leaderboard rows existed tested the last stage.
        stages = result.get("stages") or [{"name": SINGLE_STAGE}]
        tested = result["tested_stage"] if "tested_stage" in result else stages[-1]["name"]
        return identity, test, need(result, "method"), tested, result
    except (OSError, ValueError) as err:
        raise UserError(f"--resume: {path} cannot be read ({err}); remove it or use --overwrite") from None
    except MissingKey as err:
        raise UserError(f"--resume: {path} has no '{err.path}'; remove it or use --overwrite") from None


def bench_figures(paths) -> list[dict]:
    """The `aubench bench` records (each with its method, preset, stage, device, image size and
    training frames/s) in the JSON files `paths` (`aubench bench --out`; benchmarks/results holds
    the committed ones); files and entries of other kinds are passed over. UserError naming a
    file that cannot be read."""
    keys = {"method", "preset", "stage", "device", "image_size", "train_frames_per_s"}
    records = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"--bench-figures {path}: cannot be read ({err})") from None
        records += [r for r in data if isinstance(r, dict) and keys <= set(r)] if isinstance(data, list) else []
    return records


def committed_bench_figures() -> list[dict]:
    """The bench records of benchmarks/results, in a source checkout of aubench; [] elsewhere."""
    folder = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    return bench_figures(sorted(folder.glob("*.json"))) if folder.is_dir() else []


def _training_frames_per_s(figures: list[dict], config: RunConfig, stage, device_type: str) -> float | None:
    """A bench figure's training frames/s for a stage of a run: the stage's own record, else one of
    another stage of the same method, preset, model, device kind and image size (bench measures
    the tested stages); None without one."""
    from aubench.models import method_class

    model = {**variant_settings(method_class(config.method), config.variant), **config.model}
    same = [r for r in figures
            if r["method"] == config.method and r["preset"] == config.preset and r["train_frames_per_s"]
            and str(r["device"]).split()[0].split(":")[0] == device_type
            and r["image_size"] == stage.preset.image_size and (r.get("model_overrides") or {}) == model]
    own = [r for r in same if r["stage"] == stage.name]
    return (own or same)[0]["train_frames_per_s"] if same else None


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def plan_lines(request: EvaluateRequest, units: list[_Unit], kept: set[Path], there: list[_Unit], file,
               device_type: str) -> list[str]:
    """What `aubench evaluate` is about to do, in three lines: the runs (methods x label ratios x
    folds) and results (x test conditions); what is resumed (runs finished, runs continuing from
    their checkpoint) or replaced; and an estimate of the training time from `aubench bench`
    figures (request.bench_figures) for the runs still to train, frames of the fold's training
    split x each stage's epochs / its training frames/s on this kind of device (one process),
    or "no estimate" when no figure matches."""
    methods = list(dict.fromkeys(u.config.method + (f":{u.config.variant}" if u.config.variant else "")
                                 for u in units))
    folds = list(dict.fromkeys(u.config.fold for u in units))
    results = sum(len(u.results) for u in units)
    tests = list(dict.fromkeys(test for u in units for _, test in u.results))
    lines = [f"[aubench] plan: {len(methods)} method(s) ({', '.join(methods)}) x {len(request.label_ratios)} label "
             f"ratio(s) x {len(folds)} fold(s) = {len(units)} run(s); {results} result(s) under {len(tests)} test "
             f"condition(s) ({', '.join(tests)})"]
    todo = [u for u in units if any(path not in kept for path in u.results.values())]
    if request.run.overwrite and there:
        lines.append(f"[aubench] --overwrite: {len(there)} run(s) in {request.out} replaced, trained from the start")
    elif request.run.resume:
        finished = len(units) - len(todo)
        continuing = sum((Path(u.config.out) / CHECKPOINT_NAME).is_file() for u in todo)
        lines.append(f"[aubench] --resume: {finished} run(s) finished ({len(kept)} result(s) stay), {continuing} "
                     f"continue(s) from its checkpoint, {len(todo) - continuing} train(s) from the start")
    seconds, missing = 0.0, []
    for u in todo:
        frames = len(file.rows(u.config.fold, "train"))
        for stage in u.stages:
            rate = _training_frames_per_s(request.bench_figures, u.config, stage, device_type)
            if rate is None:
                missing.append(f"{u.config.method} {u.config.preset} {stage.name}")
                continue
            seconds += frames * stage.preset.epochs / rate
    if not todo:
        lines.append("[aubench] nothing to train")
    elif missing and not seconds:
        lines.append(f"[aubench] no estimate: run aubench bench first (no {device_type} figures for "
                     f"{', '.join(dict.fromkeys(missing))}; `aubench bench --methods M --preset P --out FILE`, then "
                     f"evaluate --bench-figures FILE)")
    else:
        lines.append(f"[aubench] estimate: about {_duration(seconds)} of training on one {device_type} process, "
                     f"from aubench bench figures" + (f"; not counted, without figures: {', '.join(dict.fromkeys(missing))}"
                                                      if missing else ""))
    return lines


def evaluate_runs(request: EvaluateRequest) -> list[Path]:
    """_evaluate_runs while holding the lock of every run unit's folder (aubench.engine.run_lock)."""
    with ExitStack() as locks:
        return _evaluate_runs(request, locks)


def _evaluate_runs(request: EvaluateRequest, locks: ExitStack) -> list[Path]:
    """Train and test every (method, label ratio, fold) of the request; the result files written
    or kept, in order (method, label ratio, fold, tested stage, test condition). With
    request.measure_only: only measure the size and speed of what is still to do (into
    request.benches) and return []."""
    from aubench.bench import benchmark_method
    from aubench.engine.distributed import setup_distributed
    from aubench.engine.postprocess import smooth_results
    from aubench.engine.predictions import predictions_problem, remove_result, write_result
    from aubench.engine.run import protocol_name, train_and_evaluate
    from aubench.models import method_class
    from aubench.models.base import row_method_name, tested_stages, trained_under

    template = request.run
    methods = resolve_methods(request.methods)
    file = check_data_and_folds(template.data, request.folds)
    folds = file_folds(file, request.folds)
    if template.train_occlusion is not None:
        parse_occlusion_option("--train-occlusion", template.train_occlusion)
    check_selection(template)
    for fold in folds:  # a --validation share a fold cannot give: refused before anything trains
        validation_subjects(file.fold_subjects(fold)[0], template.validation, template.seed, fold)
    tests = dict(zip(condition_names(request.test_occlusions), request.test_occlusions))  # name -> text
    protocols = [protocol_name(r) for r in request.label_ratios]  # a method's train condition suffixes them all
    if len(set(protocols)) != len(protocols):
        raise UserError(f"--label-ratios {','.join(map(str, request.label_ratios))}: two ratios give the same "
                        f"protocol name ({', '.join(protocols)})")
    env = setup_distributed(template.device)
    check_sync_bn(template, env.world_size, env.device)
    precision = resolve_precision(template.precision, env.device)
    fingerprint = file.fingerprint()
    root = Path(request.out)
    units = []
    pretrain_fingerprint = None
    if template.pretrain_data is not None:
        pretrain_fingerprint = open_pretrain_data(template.pretrain_data, RunData(Path(template.data), folds[0],
                                                                                  file)).fingerprint
    for method in methods:
        name, variant = split_method(method)
        cls = method_class(name)
        for ratio in request.label_ratios:
            for fold in folds:
                if template.pretrain_data is not None:  # its test subjects are refused, fold by fold
                    open_pretrain_data(template.pretrain_data, RunData(Path(template.data), fold, file))
                config = replace(template, method=name, variant=variant, fold=fold, label_ratio=ratio)
                preset = resolve_preset(cls, config, file.dataset)
                config.preset = preset.name  # `paper` resolved to the dataset's preset (paper-disfa ...)
                # the method's own training occlusion: --train-occlusion, else its preset's
                train = condition_name(train_occlusion(preset))
                config.out = str(root / "runs" / method / protocol_name(ratio, train) / f"fold{fold}")
                if template.tensorboard is not None:  # one event folder per run, named like its run folder
                    config.tensorboard = str(Path(template.tensorboard) / Path(config.out).relative_to(root / "runs"))
                stages = run_stages(cls, preset)
                for stage in stages:  # the checks each run's plan makes (planning.plan_run), before any run trains
                    check_stage_preset(cls, stages, stage, env.world_size, template.accumulate)
                    for option, batch in (("--batch-size", stage.preset.batch_size),
                                          ("--bench-batch-size", request.bench_batch_size)):
                        check_batch_fits(option, batch, stage.preset.image_size, env.device)
                check_stages_build(cls, file.num_aus, stages)
                check_pretraining(name, stages, template.pretrain_data)
                names = {stage.name: row_method_name(method, stage) for stage in tested_stages(stages)}
                # each tested row's own training condition (a row trained clean in an occluded run)
                trained = {stage.name: trained_under(stages, stage, train) for stage in tested_stages(stages)}
                results = {(stage, test): root / "results" /
                           f"{name}_fold{fold}_{protocol_name(ratio, trained[stage], test)}.json"
                           for stage, name in names.items() for test in tests}
                units.append(_Unit(config, config_identity(config, preset, stages, fingerprint, precision,
                                                           pretrain_fingerprint), results, names, trained, stages))
    paths = [path for u in units for path in u.results.values()]
    clash = next((path for i, path in enumerate(paths) if path in paths[:i]), None)
    if clash is not None:  # a row's name that is another method's ("a-b", and method "a" with row "b")
        raise UserError(f"two results of this evaluation would be written to {clash}; evaluate those methods "
                        f"separately, into different --out directories")
    if env.is_main and not request.measure_only:  # before looking at what the folders hold
        locks.enter_context(run_folder_locks(u.config.out for u in units))

    def held(u: _Unit) -> list[str]:
        return ([str(p.relative_to(root)) for p in u.results.values() if p.exists()]
                + [f"{Path(u.config.out).relative_to(root)}/{name}" for name in kept_run_files(u.config.out)])

    there = [u for u in units if held(u)]
    if there and not (template.resume or template.overwrite):
        found = [held(u)[0] for u in there]
        more = f" and {len(found) - 2} more" if len(found) > 2 else ""
        raise UserError(f"--out {root} already holds runs of this evaluation ({', '.join(found[:2])}{more}); pass "
                        f"--resume to keep those made with the same settings, or --overwrite to replace them")
    kept: set[Path] = set()
    if template.resume:
        for u in units:
            for (stage, test), path in u.results.items():
                if not path.is_file():
                    continue
                identity, stored_test, stored_method, stored_stage, stored = _stored_result(path)
                diffs = identity_differences(identity, u.identity, "result")
                if stored_test != test:
                    diffs.append(f"occlusion.test: result {stored_test!r} vs now {test!r}")
                if stored_method != u.names[stage]:
                    diffs.append(f"method: result {stored_method!r} vs now {u.names[stage]!r}")
                if stored_stage != stage:
                    diffs.append(f"tested_stage: result {stored_stage!r} vs now {stage!r}")
                if diffs:
                    raise UserError(f"--resume: {path} was made with other settings ({differences_text(diffs)}); "
                                    f"use --overwrite instead of --resume to replace it, or another --out")
                # A result is made only with its per-frame predictions: without them (lost, altered,
                # or a result from before predictions were kept) it is tested again.
                problem = predictions_problem(path, stored)
                if problem:
                    if env.is_main:
                        print(f"--resume: {path}: {problem}; testing it again", flush=True)
                    continue
                kept.add(path)
    if request.print_plan and env.is_main and not request.measure_only:
        for line in plan_lines(request, units, kept, there, file, env.device.type):
            print(line, flush=True)
    if template.overwrite and env.is_main and not request.measure_only:  # all at once: a rerun after a crash then finds only new runs
        for u in there:
            for path in u.results.values():
                remove_result(path)
            clear_run_files(u.config.out)

    written = []
    bench = request.benches
    for u in units:
        config = u.config
        todo = {key: path for key, path in u.results.items() if path not in kept}
        if env.is_main and not request.measure_only:
            for (stage, test), path in u.results.items():
                if path in kept:
                    protocol = protocol_name(config.label_ratio, u.train[stage], test)
                    print(f"{u.names[stage]:>10} fold {config.fold} {protocol:>10}: kept {path} (same settings)",
                          flush=True)
        if todo:
            # A run killed in training, or trained but not tested under every condition, resumes.
            config = replace(config, resume=template.resume and (Path(config.out) / CHECKPOINT_NAME).is_file())
            for stage in dict.fromkeys(stage for stage, _ in todo):
                # size and speed depend on the architecture only: once per (method variant, tested stage)
                key = (config.method, config.variant, stage)
                if key not in bench:
                    with out_of_memory_stops(f"measuring {config.method}", "--bench-batch-size",
                                             request.bench_batch_size):
                        bench[key] = benchmark_method(
                            config.method, file.num_aus, config.preset, env.device,
                            batch_size=request.bench_batch_size, precision=template.precision,
                            channels_last=template.channels_last, warmup=1, iters=3, image_size=template.image_size,
                            stage=stage, train_occlusion=template.train_occlusion,
                            model_overrides={**variant_settings(method_class(config.method), config.variant),
                                             **template.model}, au_names=file.au_names)
            if request.measure_only:
                continue
            benches = {stage: bench[(config.method, config.variant, stage)] for stage, _ in todo}
            conditions = [tests[test] for test in dict.fromkeys(test for _, test in todo)]
            results = train_and_evaluate(config, benches, test_occlusions=conditions, only=set(todo))
            for result, predictions, validation in results:
                if env.is_main:
                    write_result(todo[(result["tested_stage"], result["occlusion"]["test"])], result, predictions,
                                 validation)
                    _print_result(result, f"{result['method']:>10} fold {config.fold} {_run_name(result):>10}")
        written += list(u.results.values())
    if request.measure_only:
        return []
    if request.smoothing is not None and env.is_main:  # from the predictions files: kept results too
        written += smooth_results(written, request.smoothing)
    return written
