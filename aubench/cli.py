"""`aubench` command line: train, evaluate, bench, leaderboard, methods, demo.

User mistakes raise aubench.errors.UserError; main() prints "aubench: error: ..." and exits
with status 2, without a traceback. Run under torchrun for data-parallel training:
`torchrun --nproc_per_node 2 -m aubench.cli train --method resnet --data D.h5 --device cpu`.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from aubench.errors import UserError


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="aubench HDF5 file (datasets_tools convert)")
    p.add_argument("--preset", default="tiny", help="paper | tiny (default: tiny)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--batch-size", type=int, help="override the preset's (global) batch size")
    p.add_argument("--image-size", type=int, help="override the preset's image size")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--pretrained", help="local weights: an aubench checkpoint, or timm/torchvision backbone weights")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16 (auto: bf16/fp16 on GPU, fp32 on CPU)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default 0 on CPU, 4 on GPU)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--no-augment", action="store_true", help="turn off training augmentation")
    p.add_argument("--channels-last", action="store_true",
                   help="train and test in channels-last memory format (faster convolutions on most CPUs and GPUs)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aubench", description="Facial action unit detection benchmark")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one method on one fold, then test it")
    p.add_argument("--method", required=True)
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--label-ratio", type=float, default=1.0, help="sparse-label protocol ratio in (0, 1]")
    p.add_argument("--out", help="run directory (default runs/<method>_fold<k>)")
    _add_run_options(p)

    p = sub.add_parser("evaluate", help="train and test methods over folds; one result JSON each")
    p.add_argument("--methods", required=True, type=_name_list, help="comma-separated, or 'all'")
    p.add_argument("--folds", type=_int_list, default=[1, 2, 3])
    p.add_argument("--label-ratios", type=_float_list, default=[1.0])
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--bench-batch-size", type=int, default=4, help="batch size of the size/speed measurement")
    _add_run_options(p)

    p = sub.add_parser("bench", help="params, FLOPs and throughput of methods")
    p.add_argument("--methods", type=_name_list, default=["all"])
    p.add_argument("--preset", default="paper")
    p.add_argument("--num-aus", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int)
    p.add_argument("--device", help="cpu | cuda")
    p.add_argument("--precision", default="auto")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--no-train", action="store_true", help="skip the train-step measurement")
    p.add_argument("--json", help="also write the records to this file")

    p = sub.add_parser("leaderboard", help="one table from evaluate runs")
    p.add_argument("runs", nargs="+", help="run directories or result JSON files")
    p.add_argument("--format", default="md", choices=["md", "csv", "json"])
    p.add_argument("--plot", help="write a per-AU F1 bar chart here (PNG)")
    p.add_argument("--no-reported", action="store_true", help="leave out the papers' reported numbers")
    p.add_argument("--output", help="write the table to this file instead of stdout")

    sub.add_parser("methods", help="list the registered methods and their presets")

    p = sub.add_parser("demo", help="synthesise a small dataset, evaluate every method, print the leaderboard")
    p.add_argument("--out", default="demo_run", help="where the dataset, runs and leaderboard go")
    p.add_argument("--methods", type=_name_list, default=["all"])
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _methods(names: list[str]) -> list[str]:
    from aubench.models import available_methods

    known = available_methods()
    if names == ["all"]:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}; available methods: {', '.join(known)}")
    return names


def _run_config(args, method: str, fold: int, label_ratio: float, out: str):
    from aubench.engine.trainer import RunConfig

    return RunConfig(method=method, data=args.data, fold=fold, preset=args.preset, label_ratio=label_ratio,
                     epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size, out=out,
                     resume=args.resume, pretrained=args.pretrained, device=args.device, seed=args.seed,
                     precision=args.precision, workers=args.workers, checkpoint_every=args.checkpoint_every,
                     augment=not args.no_augment, channels_last=args.channels_last, progress=not args.no_progress)


def _check_data_and_folds(path: str, folds: list[int]) -> None:
    from aubench.engine.data_access import open_dataset_file

    file = open_dataset_file(path)
    bad = [k for k in folds if not 1 <= k <= file.num_folds]
    if bad:
        raise UserError(f"--fold {bad[0]} is out of range: {path} has folds 1..{file.num_folds}")


def cmd_train(args) -> int:
    from aubench.engine.distributed import setup_distributed
    from aubench.engine.run import protocol_name, train_and_evaluate, write_json_atomic

    _methods([args.method])
    _check_data_and_folds(args.data, [args.fold])
    out = args.out or f"runs/{args.method}_fold{args.fold}_{protocol_name(args.label_ratio)}"
    env = setup_distributed(args.device)
    result = train_and_evaluate(_run_config(args, args.method, args.fold, args.label_ratio, out))
    if env.is_main:
        write_json_atomic(Path(out) / "result.json", result)
        m = result["metrics"]
        print(f"{args.method} fold {args.fold} {result['protocol']}: mean F1 {100 * m['mean_f1']:.1f} "
              f"(all-positive {100 * m['all_positive_mean_f1']:.1f}); per AU: "
              + ", ".join(f"{au} {100 * v:.1f}" for au, v in m["f1"].items()))
        print(f"result: {Path(out) / 'result.json'}   checkpoint: {Path(out) / 'last.pt'}")
    return 0


def run_evaluate(args) -> list[Path]:
    """The evaluate loop (also used by the demo). Returns the result files written."""
    from aubench.bench import benchmark_method
    from aubench.engine.distributed import setup_distributed
    from aubench.engine.run import protocol_name, train_and_evaluate, write_json_atomic

    methods = _methods(args.methods)
    _check_data_and_folds(args.data, args.folds)
    for r in args.label_ratios:
        if not 0 < r <= 1:
            raise UserError(f"--label-ratios: {r} is not in (0, 1]")
    env = setup_distributed(args.device)
    root = Path(args.out)
    written = []
    from aubench.engine.data_access import open_dataset_file

    num_aus = open_dataset_file(args.data).num_aus
    for method in methods:
        bench = None
        for ratio in args.label_ratios:
            protocol = protocol_name(ratio)
            for fold in args.folds:
                result_path = root / "results" / f"{method}_fold{fold}_{protocol}.json"
                if args.resume and result_path.is_file():
                    written.append(result_path)
                    continue
                run_dir = root / "runs" / method / protocol / f"fold{fold}"
                config = _run_config(args, method, fold, ratio, str(run_dir))
                config = replace(config, resume=args.resume and (run_dir / "last.pt").is_file())
                if bench is None:  # size and speed depend on the architecture only: once per method
                    bench = benchmark_method(method, num_aus, args.preset, env.device, batch_size=args.bench_batch_size,
                                             precision=args.precision, channels_last=args.channels_last,
                                             warmup=1, iters=3,
                                             image_size=args.image_size)
                result = train_and_evaluate(config, bench)
                if env.is_main:
                    write_json_atomic(result_path, result)
                    print(f"{method:>10} fold {fold} {protocol:>10}: mean F1 {100 * result['mean_f1']:5.1f} "
                          f"(all-positive {100 * result['metrics']['all_positive_mean_f1']:5.1f})", flush=True)
                written.append(result_path)
    return written


def cmd_evaluate(args) -> int:
    written = run_evaluate(args)
    from aubench.engine.distributed import setup_distributed

    if setup_distributed(args.device).is_main:
        print(f"{len(written)} results in {Path(args.out) / 'results'}; table: aubench leaderboard {args.out}")
    return 0


def cmd_bench(args) -> int:
    from aubench.bench import benchmark_method
    from aubench.engine.distributed import resolve_device

    device = resolve_device(args.device)
    records = []
    header = f"{'method':>10} {'preset':>6} {'params M':>9} {'GFLOPs/f':>9} {'infer f/s':>10} {'train f/s':>10}  setting"
    print(header)
    for method in _methods(args.methods):
        r = benchmark_method(method, args.num_aus, args.preset, device, args.batch_size, args.precision,
                             args.channels_last, args.warmup, args.iters, train=not args.no_train,
                             image_size=args.image_size)
        records.append(r)
        train = f"{r['train_frames_per_s']:10.1f}" if "train_frames_per_s" in r else f"{'-':>10}"
        print(f"{method:>10} {r['preset']:>6} {r['params_m']:9.2f} {r['gflops_per_frame']:9.3f} "
              f"{r['infer_frames_per_s']:10.1f} {train}  batch {r['batch_size']} ({r['frames_per_batch']} frames), "
              f"{r['image_size']}px, {r['precision']}, channels_last={r['channels_last']}, {r['device']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    return 0


def cmd_leaderboard(args) -> int:
    from aubench import leaderboard

    rows = leaderboard.build_rows(leaderboard.find_results(args.runs), include_reported=not args.no_reported)
    text = leaderboard.render(rows, args.format)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    if args.plot:
        for path in leaderboard.plot(rows, args.plot):
            print(f"plot: {path}", file=sys.stderr)
    return 0


def cmd_methods(args) -> int:
    from aubench.models import available_methods, method_class

    for name in available_methods():
        cls = method_class(name)
        presets = ", ".join(f"{k} ({p.image_size}px, {p.epochs} epochs, batch {p.batch_size})"
                            for k, p in sorted(cls.presets.items()))
        print(f"{name:>10}  {cls.input_kind:<5}  {presets}")
    return 0


def cmd_demo(args) -> int:
    from aubench.demo import run_demo

    return run_demo(args.out, args.methods, args.device, args.seed)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "bench": cmd_bench, "leaderboard": cmd_leaderboard,
            "methods": cmd_methods, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import aubench.models  # noqa: F401  (registers the methods)

        return COMMANDS[args.command](args)
    except UserError as err:
        print(f"aubench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aubench: interrupted", file=sys.stderr)
        return 130
    finally:
        from aubench.engine.distributed import cleanup_distributed

        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
