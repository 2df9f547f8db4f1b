"""`aubench` command line: train, evaluate, predictions, predict, smooth, ensemble, bench, leaderboard, methods,
plot, demo.

User mistakes raise aubench.errors.UserError; main() prints "aubench: error: ..." and exits
with status 2, without a traceback. Bad argument values are caught while parsing (the type
functions below) and reported the same way. The exit codes, --quiet and --out follow the
convention both command lines share (datasets_tools.command_line; docs/reliability.md, "Exit
codes"). Run under torchrun for data-parallel training:
`torchrun --nproc_per_node 2 -m aubench.cli train --method resnet --data D.h5 --device cpu`; there
a user error is printed by rank 0 only, and every rank exits with its code.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from aubench.errors import UserError
from datasets_tools.command_line import (EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USER_ERROR, OneLineParser,
                                         add_out, add_quiet)


class _Parser(OneLineParser):
    """argparse with the command line's error format: one line "aubench: error: ...", status 2."""

    def error_prefix(self) -> str:
        return "aubench"

    def error(self, message: str):
        self.exit(_print_error(self.error_line(message), EXIT_USER_ERROR))


# How long the ranks of a torchrun job wait for each other after a user error (_print_error).
PEER_ERROR_WAIT_S = 10.0


def _other_rank() -> int | None:
    """This process's rank in a torchrun job when it is not rank 0; None otherwise."""
    rank = int(os.environ.get("RANK", "0"))
    return rank if rank != 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def _error_counter():
    """A counter of the ranks that met a user error, in the key-value store torchrun's agent
    serves to its ranks (TORCHELASTIC_USE_AGENT_STORE); None outside torchrun or without it."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta

    import torch.distributed as dist

    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=5))
    except (KeyError, ValueError, RuntimeError):  # no store to reach (DistStoreError is a RuntimeError)
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return lambda add: store.add(f"aubench/attempt_{attempt}/ranks_with_a_user_error", add)


def _print_error(line: str, code: int) -> int:
    """Print an error line on stderr, once per torchrun job, and return `code`.

    A single process prints at once. In a torchrun job, where the ranks usually meet the same
    error, rank 0 prints it, then waits (up to PEER_ERROR_WAIT_S) until every rank has met an
    error before it exits; torchrun then stops the others (SIGTERM), which are waiting for that
    and exit with `code` without a word. A rank other than 0 still running after the wait met an
    error of its own: it prints it, naming its rank."""
    counter = _error_counter()
    if counter is not None:
        counter(1)
    rank = _other_rank()
    if rank is None:
        print(line, file=sys.stderr, flush=True)
        deadline = time.monotonic() + PEER_ERROR_WAIT_S
        while counter is not None and counter(0) < int(os.environ["WORLD_SIZE"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(code))
    time.sleep(PEER_ERROR_WAIT_S)
    signal.signal(signal.SIGTERM, previous)
    print(line.replace("aubench: ", f"aubench: rank {rank}: ", 1), file=sys.stderr, flush=True)
    return code


def _int_at_least(low: int | None, why: str = ""):
    """An argparse type: an integer >= low (any integer when low is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}{why}, got {value}")
        return value
    return parse


_integer = _int_at_least(None)  # folds: the dataset file says which exist (_check_data_and_folds)
_positive = _int_at_least(1)
_non_negative = _int_at_least(0)
# Batch norm cannot train on a single sample (the last stage of a 32-px ResNet has one cell).
_train_batch = _int_at_least(2, " (batch norm needs two samples per training step)")


def _seed(text: str) -> int:
    value = _non_negative(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value


def _label_ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _list_of(item, what: str, repeats: bool = False):
    """An argparse type: a comma-separated, non-empty list (without repeats unless `repeats`), each
    item parsed by `item`."""
    def parse(text: str) -> list:
        values = [item(x.strip()) for x in text.split(",") if x.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        repeated = None if repeats else next((v for i, v in enumerate(values) if v in values[:i]), None)
        if repeated is not None:
            raise argparse.ArgumentTypeError(f"{repeated} is listed twice")
        return values
    return parse


def _condition(text: str) -> str:
    """An occlusion condition (none, patches:<ratio>, block:<ratio>), passed on as written."""
    from aubench.data.occlusion import parse_condition

    try:
        parse_condition(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _smoothing(text: str):
    """--smooth: a temporal filter (aubench.engine.postprocess.Smoothing)."""
    from aubench.engine.postprocess import parse_smoothing

    try:
        return parse_smoothing(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _validation_share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (a share of the fold's training subjects), got {text}")
    return value


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


SMOOTH_HELP = ("also write each result smoothed along each sequence: gaussian:<kernel size>:<sigma> (the RegNetY + "
               "ViViT paper's gaussian:51:3.0), each AU's probabilities filtered per sequence, never across "
               "sequences, before thresholding; written beside the result as <stem>_smooth-gaussian-k51-s3.json, "
               "its protocol \"<protocol>+smooth-gaussian-k51-s3\" (a leaderboard section of its own)")


def _model_setting(text: str) -> tuple[str, object]:
    """--model KEY=VALUE: VALUE as JSON (numbers, true / false, null, lists, objects), else the text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def _model_overrides(pairs) -> dict:
    return dict(pairs or [])


_PART_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _pretrained(text: str) -> tuple[str, str]:
    """--pretrained [PART=]SOURCE: (part, source), part "" for a bare SOURCE (the method's main
    part). A file is made absolute, so a rerun from another directory names the same file."""
    from aubench.models.backbones import is_hub_source

    part, sep, source = text.partition("=")
    if not sep or not _PART_NAME.fullmatch(part):  # a bare SOURCE (a path may hold "=")
        part, source = "", text
    if not source.strip():
        raise argparse.ArgumentTypeError(f"expected [PART=]SOURCE, got {text!r}")
    return part, source if is_hub_source(source) else str(Path(source).resolve())


def _pretrained_sources(pairs) -> dict[str, str] | None:
    """The --pretrained (part, source) pairs as part -> source; None without any."""
    sources: dict[str, str] = {}
    for part, source in pairs or []:
        if part in sources:
            raise UserError(f"--pretrained {part + '=' if part else ''}{source}: "
                            f"{'part ' + repr(part) if part else 'a bare SOURCE'} is given twice")
        sources[part] = source
    return sources or None


_fold_list = _list_of(_integer, "fold numbers")
_condition_list = _list_of(_condition, "occlusion conditions")
_ratio_list = _list_of(_label_ratio, "label ratios in (0, 1]")
_name_list = _list_of(str, "names")
_weight_list = _list_of(_weight, "positive weights", repeats=True)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="aubench HDF5 file (datasets_tools convert)")
    p.add_argument("--preset", help="paper | tiny | a method's other preset (default: tiny, a CPU-sized model, "
                                    "named in one line); paper picks the paper's settings for the data file's "
                                    "dataset where the paper gives them per dataset (paper-bp4d, paper-disfa); "
                                    "`aubench methods` lists each method's presets and their sources")
    p.add_argument("--model", type=_model_setting, action="append", metavar="KEY=VALUE",
                   help="override one of the preset's model settings (repeatable; VALUE is JSON or text), e.g. "
                        "--model backbone=swin_base_patch4_window7_224 --model neighbours=3; part of the run's settings")
    p.add_argument("--epochs", type=_positive, help="override the preset's epochs")
    p.add_argument("--batch-size", type=_train_batch, help="override the preset's (global) batch size (at least 2)")
    p.add_argument("--image-size", type=_positive,
                   help="override the preset's image size (at least the backbone's total stride: 32 for a ResNet)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    again.add_argument("--overwrite", action="store_true",
                       help="replace an earlier run in OUT (checkpoint, result, log) instead of refusing")
    p.add_argument("--pretrained", type=_pretrained, action="append", metavar="[PART=]SOURCE",
                   help="weights for one of the method's parts (repeatable; `aubench methods` lists them; a bare "
                        "SOURCE is the method's main part). SOURCE: timm:<model>[.<tag>] (e.g. "
                        "timm:resnet50.a1_in1k: timm's weights, fetched into its Hugging Face cache; HF_HUB_OFFLINE=1 "
                        "reads the cache only), hf-hub:<repo id>, or a file: timm's, torchvision's, the official "
                        "Swin or MAE release's, a Lightning / DDP state dict or .safetensors; a bare SOURCE may be "
                        "an aubench checkpoint (the whole first stage). Part of the run's settings by each "
                        "source's name and the sha256 of its tensors, not its path")
    p.add_argument("--pretrain-data", help="an aubench HDF5 file (labeled or not, e.g. `datasets_tools convert "
                                           "images`) whose frames a self-supervised pre-training stage learns "
                                           "from instead of the fold's training frames; the run's own file "
                                           "gives its fold's training subjects; part of the run's settings")
    p.add_argument("--train-occlusion", type=_condition, default=None,
                   help="occlude the training images: none, patches:<ratio> (random cells of 1/14 of the image "
                        "side) or block:<ratio> (one rectangle); part of the run's settings (default: the method "
                        "preset's training occlusion, none for most methods)")
    p.add_argument("--test-occlusion", type=_condition_list, default=["none"],
                   help="comma-separated test conditions (e.g. none,patches:0.5,block:0.3): the run is trained "
                        "once and tested under each, one result per condition (default: none)")
    p.add_argument("--occluded-landmarks", choices=("clean", "detect"), default="clean",
                   help="landmarks of an occluded test image, for methods that read them (RRL): clean = the "
                        "data file's, of the clean frame (results and the leaderboard mark such rows); detect = "
                        "detected on the occluded image with dlib (the faces extra), the training faces' mean "
                        "shape where no face is found; part of the run's settings (default: clean)")
    from aubench.engine.identity import SELECTIONS, THRESHOLDS
    from aubench.engine.postprocess import THRESHOLD_GRID

    p.add_argument("--validation", type=_validation_share, default=0.0, metavar="R",
                   help="hold out a share R of each fold's training subjects (whole subjects, drawn with --seed) as "
                        "a validation split: the run trains on the others, whose labels alone give the label "
                        "statistics (class weights, co-occurrence, AU rates); results record the split and keep "
                        "their predictions on it (<stem>.validation.predictions.npz); part of the run's settings "
                        "(default 0: none; docs/validation.md)")
    p.add_argument("--select", choices=SELECTIONS, default="last",
                   help="the checkpoint of each tested stage that is tested: last (the last epoch, default), "
                        "best-val (the epoch with the best validation mean F1; needs --validation), best-test (the "
                        "best test mean F1: only to measure how optimistic choosing on the test set is; its results "
                        "and leaderboard rows are marked chosen on test); part of the run's settings")
    p.add_argument("--thresholds", choices=THRESHOLDS, default="fixed",
                   help=f"decision thresholds: fixed (0.5, default) or best-val (per AU, the one of "
                        f"{THRESHOLD_GRID[0]:g}, {THRESHOLD_GRID[1]:g} ... {THRESHOLD_GRID[-1]:g} with the best F1 on "
                        f"the validation predictions; needs --validation); part of the run's settings")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the run's initialisation, data order, augmentation and sparse-label draw; part of "
                        "the run's settings (default 0)")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16 (auto: bf16/fp16 on GPU, fp32 on CPU)")
    p.add_argument("--workers", type=_non_negative, help="DataLoader workers (default 0 on CPU, 4 on GPU)")
    p.add_argument("--checkpoint-every", type=_non_negative, default=0, help="also checkpoint every N steps")
    p.add_argument("--accumulate", type=_positive, default=1, metavar="K",
                   help="gradient accumulation: K micro-batches per optimiser step, so the preset's global batch "
                        "(per-process batch x processes x K) fits fewer or smaller GPUs; part of the run's settings "
                        "(default 1)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs, BatchNorm layers normalise with the statistics of every process's "
                        "batch (SyncBatchNorm); part of the run's settings")
    p.add_argument("--no-augment", action="store_true", help="turn off training augmentation")
    p.add_argument("--channels-last", action="store_true",
                   help="train and test in channels-last memory format (faster convolutions on most CPUs and GPUs)")
    add_quiet(p, help="no progress bars and no per-epoch summary lines (the preset line, errors and the final "
                      "result are still printed)")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="also write the training scalars (each loss part, lr) as TensorBoard events into DIR "
                        "(needs the tensorboard package)")
    p.add_argument("--smooth", type=_smoothing, metavar="SPEC", help=SMOOTH_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aubench", description="Facial action unit detection benchmark")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one method on one fold, then test it",
                       description="Train one method on one fold (every stage of a method that trains in stages), "
                                   "then test it. OUT gets last.pt (the checkpoint, naming the stage it is in), "
                                   "final_<stage>.pt (the final weights of each earlier stage), result.json (and "
                                   "result_test-<condition>.json per occluded test condition; for a method whose "
                                   "stages are leaderboard rows result_<row>.json and result_<row>_test-<condition>"
                                   ".json per row), each result with its per-frame predictions beside it "
                                   "(<stem>.predictions.npz; `aubench predictions` exports them), and log.jsonl. Into "
                                   "an OUT that holds another run's checkpoint or result, train refuses unless "
                                   "--resume (continue it inside the stage it was in; its settings, stages "
                                   "included, must equal these) or --overwrite (replace all of its files) is given.")
    p.add_argument("--method", required=True,
                   help="the method to train (`aubench methods` lists them; a leaderboard row such as "
                        "maefau-student trains its method)")
    p.add_argument("--fold", type=_integer, default=1, help="the fold to test on (default 1); the data file says "
                                                           "which exist")
    p.add_argument("--label-ratio", type=_label_ratio, default=1.0, help="sparse-label protocol ratio in (0, 1]")
    p.add_argument("--out", help="run directory (default runs/<method>_fold<k>_<protocol>); locked by OUT/run.lock "
                                 "while the run writes it: a second run into it stops at once")
    _add_run_options(p)

    p = sub.add_parser("evaluate", help="train and test methods over folds; one result JSON each",
                       description="Train and test methods over folds and label ratios; OUT/results gets one "
                                   "result JSON per (method, fold, protocol, test occlusion condition), each with "
                                   "its per-frame predictions beside it (<stem>.predictions.npz), OUT/runs "
                                   "their checkpoints and logs; each run trains once and is tested under every "
                                   "condition. A method whose stages are leaderboard rows (e.g. a teacher and its "
                                   "student) gets results per row, named <method>-<row>. "
                                   "When OUT already holds results or checkpoints of these runs, evaluate refuses "
                                   "unless --resume (keep each result made with exactly these settings whose "
                                   "predictions file is intact, continue "
                                   "killed runs, test trained runs under the conditions not yet tested, train the "
                                   "rest; a result made with other settings is an error "
                                   "naming the file and the settings that differ) or --overwrite (replace them "
                                   "all) is given.")
    p.add_argument("--methods", required=True, type=_name_list, help="comma-separated, or 'all'")
    p.add_argument("--folds", type=_fold_list, help="comma-separated folds (default: every fold of the data file)")
    p.add_argument("--label-ratios", type=_ratio_list, default=[1.0],
                   help="comma-separated sparse-label protocol ratios in (0, 1] (default 1: every label)")
    p.add_argument("--out", required=True, help="run directory; each run unit's folder (OUT/runs/<method>/<protocol>/"
                                                "fold<k>) is locked by its run.lock while it is written: a second "
                                                "evaluation of the same unit stops at once")
    p.add_argument("--bench-batch-size", type=_train_batch, default=4, help="batch size of the size/speed measurement")
    p.add_argument("--bench-figures", action="append", metavar="FILE",
                   help="records of `aubench bench --out FILE` (repeatable) from which the plan printed before "
                        "training estimates its time (default: the committed benchmarks/results of a source "
                        "checkout)")
    p.add_argument("--dry-run", action="store_true",
                   help="train nothing and write nothing: open the data, resolve the presets, load --pretrained, "
                        "build every stage's model and optimiser on the first fold and run one training step on "
                        "one real batch; print per stage its parameters, batch, steps per epoch, epochs and the "
                        "memory one GPU needs at the preset's batch and the run's precision (measured on a GPU; "
                        "estimated on a CPU from a step at batch 2, or one 8-frame window for window models)")
    _add_run_options(p)

    p = sub.add_parser("predictions", help="export a result's per-frame AU probabilities as CSV",
                       description="Export the per-frame predictions kept beside a result JSON (its "
                                   "<stem>.predictions.npz, checked against the sha256 the result records) as "
                                   "CSV in the layout of OpenFace / LibreFace: one row per test frame, in the "
                                   "HDF5 file's row order: sequence, frame (the dataset's frame number), then "
                                   "per AU its probability and its 0/1 detection at the result's threshold "
                                   "(AU01_p, AU01_c, ...).")
    p.add_argument("result", help="a result JSON written by `aubench train` or `aubench evaluate`")
    add_out(p, "the CSV file to write (missing folders are created)", alias="--csv")

    p = sub.add_parser("predict", help="run a trained model on videos and photos; one OpenFace-style CSV per input",
                       description="Predict AUs on real videos, image files and folders of images with a trained "
                                   "run: every face found (dlib's detector and 68-point predictor, the faces extra), "
                                   "prepared as the training file's faces were (its crop, size and landmarks; where "
                                   "that crop cannot be reproduced on other frames, --crop align's canon, said in "
                                   "one line), followed across frames with a face_id. Writes OUT/<name>.csv (one "
                                   "per video and per folder, images.csv for the image files; one row per face per "
                                   "frame, OpenFace's column names) and OUT/<name>.json beside it (run, checkpoint "
                                   "sha256, training file, crop, detector, versions, counts, throughput), each "
                                   "atomically. Exit status 1 when a video stopped decoding early (its rows up to "
                                   "the last decodable frame are written). See docs/predict.md.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video files (whatever OpenCV decodes: mp4, avi, mov, mkv ...), image files, folders of "
                        "images (one folder = one sequence, in natural order; files that are not images skipped "
                        "and counted)")
    p.add_argument("--run", required=True,
                   help="a `train --out` folder, an `evaluate --out` folder (with --method and --fold), or a "
                        "result JSON")
    p.add_argument("--method", help="the method (a leaderboard row name such as maefau-student) of the run to use")
    p.add_argument("--fold", type=_integer, help="the fold of the run to use (an evaluate folder)")
    p.add_argument("--out", required=True, help="folder for the CSV and JSON files (created when missing)")
    p.add_argument("--data", help="the run's training file when it has moved (its fingerprint must be the one the "
                                  "run records)")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=_positive, default=32, help="faces (or clip frames) per forward pass (32)")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16 (auto: bf16/fp16 on GPU, fp32 on CPU)")
    p.add_argument("--detect-every", type=_positive, default=1, metavar="K",
                   help="run the face detector on every K-th frame of a video or folder and follow the faces in "
                        "between by fitting their landmarks again (1: every frame)")
    faces = p.add_mutually_exclusive_group()
    faces.add_argument("--max-faces", type=_positive, metavar="N", help="keep the N largest faces of a frame")
    faces.add_argument("--largest-face", action="store_true", help="keep the largest face of a frame (--max-faces 1)")
    p.add_argument("--detect-max-side", type=_int_at_least(64), default=None,
                   help="frames larger than this (longer side, px) are shrunk for the face detector (1024; "
                        "datasets_tools convert's default is 640); the landmarks are placed at full resolution")
    p.add_argument("--detect-upsample-below", type=_positive, default=None, metavar="PX",
                   help="frames whose shorter side (after --detect-max-side) is under PX are upsampled once for the "
                        "face detector, which finds faces of 80 px and more (300; datasets_tools convert's is 400); "
                        "upsampling makes detection four times slower")
    p.add_argument("--smooth", type=_smoothing, metavar="SPEC",
                   help="smooth each face's probabilities along its frames: gaussian:<kernel size>:<sigma>, e.g. "
                        "gaussian:51:3.0; never across face_ids or gaps")
    p.add_argument("--landmarks-out", action="store_true",
                   help="also write the 68 landmarks, x_0..x_67 and y_0..y_67, in the frame's pixels")
    add_quiet(p, help="no line per input")

    p = sub.add_parser("smooth", help="smooth existing results along each sequence, without retraining",
                       description="Smooth the per-frame predictions of existing results (every result with "
                                   "predictions under the run directories, or the result files named) along each "
                                   "sequence, never across sequences, and write each smoothed result beside its "
                                   "source as <stem>_smooth-<name>.json, scored against the labels of the data "
                                   "file the source was tested on. A smoothed result already there, made from the "
                                   "same predictions with the same filter, is kept. Each smoothed result records "
                                   "how its filter was chosen (docs/postprocess.md).")
    p.add_argument("runs", nargs="+", help="run directories (aubench evaluate OUT) or result JSON files")
    from aubench.engine.postprocess import SMOOTHING_GRID

    grid_kernels = ", ".join(map(str, dict.fromkeys(f.kernel_size for f in SMOOTHING_GRID)))
    grid_sigmas = ", ".join(f"{sigma:g}" for sigma in dict.fromkeys(f.sigma for f in SMOOTHING_GRID))
    chosen = p.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--smooth", type=_smoothing, metavar="SPEC",
                        help="gaussian:<kernel size>:<sigma>, e.g. gaussian:51:3.0 (the RegNetY + ViViT paper's)")
    chosen.add_argument("--select-on-validation", action="store_true",
                        help=f"for each result, the filter of a small grid (kernel {grid_kernels} x sigma "
                             f"{grid_sigmas}) whose smoothed predictions on its run's validation split score the best "
                             f"mean F1 (results of runs with --validation); written as <stem>_smooth-val.json, "
                             f"protocol \"<protocol>+smooth-val\", recording the filter chosen and every candidate's "
                             f"score")
    p.add_argument("--methods", type=_name_list, help="only the results of these methods (comma-separated)")
    p.add_argument("--data", help="the data file the results were tested on, when it has moved (its fingerprint "
                                  "must be the one the results record; one file for every result named)")

    p = sub.add_parser("ensemble", help="fuse the per-frame predictions of several runs into ensemble results",
                       description="Fuse the per-frame probabilities of two or more members by (weighted) average, "
                                   "fold by fold, for every (dataset, protocol, test condition) all members have, and write "
                                   "ordinary results into OUT/results (<name>_fold<k>_<protocol>...json, each with "
                                   "its predictions), which the leaderboard shows as a row named NAME. A member is "
                                   "a method's results in a RUN (a run directory or result files): each RUN gives "
                                   "the methods of --methods it holds, or its only method. Members that share no "
                                   "dataset, protocol and test condition, and members whose folds, data files, AU "
                                   "sets, test rows, thresholds or training occlusion differ are refused, before anything is written. An ensemble result already in OUT "
                                   "made from the same members' predictions and weights is kept; one made otherwise "
                                   "is replaced only with --overwrite (which also removes the name's results that "
                                   "are not made again).")
    p.add_argument("runs", nargs="+", help="run directories (aubench evaluate OUT) or result JSON files")
    p.add_argument("--name", required=True, help="the ensemble's name in results and the leaderboard")
    p.add_argument("--out", required=True, help="directory for the ensemble's results (OUT/results)")
    p.add_argument("--methods", type=_name_list, help="the members' methods (comma-separated), taken from each RUN "
                                                      "that holds them")
    p.add_argument("--weights", type=_weight_list, help="one positive weight per member, in member order (RUN "
                                                        "order, then --methods order); normalised to sum 1 "
                                                        "(default: equal)")
    p.add_argument("--smooth", type=_smoothing, metavar="SPEC",
                   help="also smooth the fused predictions: gaussian:<kernel size>:<sigma>, e.g. gaussian:51:3.0")
    p.add_argument("--overwrite", action="store_true", help="replace ensemble results made from other inputs")
    p.add_argument("--data", help="the data file the members were tested on, when it has moved (its fingerprint "
                                  "must be the one the results record)")

    p = sub.add_parser("bench", help="params, FLOPs and throughput of methods",
                       description="Measure each method's parameters, GFLOPs per frame and inference and training "
                                   "frames/s at a preset's model, on random input; one line per method (per "
                                   "leaderboard row of a method whose stages are rows). `--out FILE` keeps the "
                                   "records as JSON (benchmarks/results has the committed ones).")
    p.add_argument("--methods", type=_name_list, default=["all"], help="comma-separated methods (default: all)")
    p.add_argument("--preset", default="paper", help="the preset whose model is measured (default: paper)")
    p.add_argument("--num-aus", type=_positive, default=12, help="AUs the model predicts (default 12)")
    p.add_argument("--batch-size", type=_positive, default=8, help="at least 2 unless --no-train")
    p.add_argument("--image-size", type=_positive, help="override the preset's image size")
    p.add_argument("--model", type=_model_setting, action="append", metavar="KEY=VALUE",
                   help="override one of the preset's model settings (repeatable; VALUE is JSON or text)")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16 (auto: bf16/fp16 on GPU, fp32 on CPU)")
    p.add_argument("--channels-last", action="store_true", help="measure in channels-last memory format")
    p.add_argument("--warmup", type=_non_negative, default=3, help="untimed iterations before measuring (3)")
    p.add_argument("--iters", type=_positive, default=10, help="timed iterations (10)")
    p.add_argument("--no-train", action="store_true", help="skip the train-step measurement")
    add_out(p, "also write the records as JSON to this file", required=False, alias="--json")

    from aubench.leaderboard import GROUPING, PLOT_NAME

    p = sub.add_parser("leaderboard", help="one table from evaluate runs", description=GROUPING,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories or result JSON files")
    p.add_argument("--format", default="md", choices=["md", "csv", "json"], help="table format (default: md)")
    p.add_argument("--plot", help=f"write the per-AU F1 bar chart to this file (.png added when it has no suffix; "
                                  f"PLOT/{PLOT_NAME} when PLOT is a directory); with several label ratios also "
                                  f"<name>_label_ratio.png beside it; the paths written are printed")
    p.add_argument("--no-reported", action="store_true", help="leave out the papers' reported numbers")
    p.add_argument("--plot-reported", action="store_true",
                   help="also draw the papers' reported rows in the --plot charts (default: our rows and the "
                        "all-positive baseline)")
    p.add_argument("--merge", action="store_true",
                   help="average one method's folds even when their settings differ (the row says what was mixed)")
    add_out(p, "write the table to this file instead of stdout (missing folders are created; never a result, "
               "predictions, checkpoint or data file)", required=False, alias="--output")
    p.add_argument("--verify", action="store_true",
                   help="compute every result's metrics again from its predictions file and its data file; a "
                        "result that does not match (or cannot be recomputed) is named, left out of the table, "
                        "and the exit status is 1")
    p.add_argument("--data", help="--verify: the data file the results were tested on, when it has moved")

    sub.add_parser("methods", help="list the registered methods and their presets")

    p = sub.add_parser("plot", help="draw a run's training curves (loss parts and lr over steps) to a PNG",
                       description="Draw the loss parts and the learning rate of a run over its steps, one row per "
                                   "stage, from the run's log.jsonl alone (no extra package), to RUN/curves.png or "
                                   "--out; the path written is printed.")
    p.add_argument("run", metavar="RUN", help="a run directory written by `aubench train` (or its log.jsonl)")
    add_out(p, "the image to write (default RUN/curves.png; a directory gets curves.png inside it; .png is added "
               "when there is no suffix)", required=False, metavar="PNG")

    p = sub.add_parser("demo", help="synthesise a small dataset, evaluate every method, print the leaderboard; "
                                    "exit 1 when a method is not above the all-positive baseline")
    p.add_argument("--out", default="demo_run", help="where the dataset, runs and leaderboard go")
    p.add_argument("--methods", type=_name_list, default=["all"], help="comma-separated methods (default: all)")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the synthetic data and of every run")
    return parser


def _run_config(args, method: str, fold: int, label_ratio: float, out: str):
    from aubench.engine.config import RunConfig
    from aubench.engine.evaluate import DEFAULT_PRESET
    from aubench.models.base import split_method

    name, variant = split_method(method)
    return RunConfig(method=name, variant=variant, data=args.data, fold=fold, preset=args.preset or DEFAULT_PRESET,
                     label_ratio=label_ratio, pretrain_data=args.pretrain_data,
                     train_occlusion=args.train_occlusion, epochs=args.epochs, batch_size=args.batch_size,
                     image_size=args.image_size, out=out, resume=args.resume, overwrite=args.overwrite,
                     pretrained=_pretrained_sources(args.pretrained), device=args.device, seed=args.seed,
                     precision=args.precision,
                     workers=args.workers, checkpoint_every=args.checkpoint_every, accumulate=args.accumulate,
                     sync_bn=args.sync_bn, augment=not args.no_augment,
                     channels_last=args.channels_last, progress=not args.quiet,
                     occluded_landmarks=args.occluded_landmarks, validation=args.validation, select=args.select,
                     thresholds=args.thresholds, model=_model_overrides(args.model), tensorboard=args.tensorboard)


def cmd_train(args) -> int:
    from dataclasses import replace

    from aubench.data.occlusion import condition_name
    from aubench.engine.distributed import setup_distributed
    from aubench.engine.evaluate import check_data_and_folds, preset_line, resolve_methods, train_run
    from aubench.engine.planning import resolve_preset, train_occlusion
    from aubench.engine.run import protocol_name
    from aubench.models import method_class

    config = _run_config(args, args.method, args.fold, args.label_ratio, args.out or "")
    resolve_methods([args.method])
    dataset = check_data_and_folds(args.data, [args.fold]).dataset
    line = preset_line([args.method], args.preset, dataset)
    if line and setup_distributed(args.device).is_main:
        print(line, flush=True)
    if not args.out:  # named by the method's own training occlusion: --train-occlusion, else its preset's
        train = condition_name(train_occlusion(resolve_preset(method_class(config.method), config, dataset)))
        config = replace(config, out=f"runs/{args.method}_fold{args.fold}_{protocol_name(args.label_ratio, train)}")
    train_run(config, args.test_occlusion, args.smooth)
    return 0


def cmd_evaluate(args) -> int:
    from aubench.engine.distributed import setup_distributed
    from aubench.engine.evaluate import (EvaluateRequest, bench_figures, check_data_and_folds,
                                         committed_bench_figures, evaluate_runs, preset_line, resolve_methods)

    figures = bench_figures(args.bench_figures) if args.bench_figures else committed_bench_figures()
    request = EvaluateRequest(methods=args.methods, run=_run_config(args, "", 1, 1.0, args.out), out=args.out,
                              folds=args.folds, label_ratios=args.label_ratios, test_occlusions=args.test_occlusion,
                              bench_batch_size=args.bench_batch_size, smoothing=args.smooth, print_plan=True,
                              bench_figures=figures)
    is_main = setup_distributed(args.device).is_main
    line = preset_line(resolve_methods(args.methods), args.preset, check_data_and_folds(args.data, args.folds).dataset)
    if line and is_main:
        print(line, flush=True)
    if args.dry_run:
        return _dry_run(request, is_main)
    written = evaluate_runs(request)
    if is_main:
        print(f"{len(written)} results in {Path(args.out) / 'results'}; table: aubench leaderboard {args.out}")
    return 0


def _dry_run(request, is_main: bool) -> int:
    """`evaluate --dry-run`: each stage's check printed as it is made (aubench.engine.dry_run)."""
    from aubench.engine.dry_run import describe, dry_run

    shown = set()

    def report(check) -> None:
        if not is_main:
            return
        run = (check.method, check.label_ratio)
        if run not in shown:
            shown.add(run)
            print(f"{check.method}: preset {check.preset}, fold {check.fold}, label ratio {check.label_ratio:g}, "
                  f"initialisation {check.initialisation}", flush=True)
        print(describe(check), flush=True)

    if is_main:
        print("dry run: nothing is trained or written; the first fold of the run only", flush=True)
    dry_run(request, report=report)
    return 0


def cmd_predictions(args) -> int:
    from aubench.engine.predictions import export_csv

    frames = export_csv(args.result, args.out)
    print(f"{frames} frames: {args.out}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    from aubench.predict import Predictor, check_out, faces_unavailable_reason, plan_inputs, predict_inputs

    reason = faces_unavailable_reason()  # before any work
    if reason:
        raise UserError(reason)
    inputs = plan_inputs(args.inputs)
    predictor = Predictor.from_run(args.run, args.method, args.fold, args.device, precision=args.precision,
                                   data=args.data, batch_size=args.batch_size, detect_every=args.detect_every,
                                   max_faces=1 if args.largest_face else args.max_faces, smoothing=args.smooth,
                                   detect_max_side=args.detect_max_side,
                                   detect_upsample_below=args.detect_upsample_below)
    check_out(args.out)
    echo = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    written = predict_inputs(predictor, inputs, args.out, landmarks=args.landmarks_out, echo=echo)
    warnings = [line for w in written for line in w.warnings]
    for line in dict.fromkeys(warnings):  # the crop note once, not once per input
        print(f"aubench predict: warning: {line}", file=sys.stderr)
    return 1 if any(w.record["counts"].get("decoded", 0) < w.record["counts"].get("header_frames", 0)
                    for w in written) else 0


def cmd_smooth(args) -> int:
    from aubench.engine.postprocess import raw_results, smooth_results
    from aubench.engine.predictions import TestLabels

    smoothing = None if args.select_on_validation else args.smooth  # None: chosen on validation
    written = smooth_results(raw_results(args.runs, args.methods), smoothing, TestLabels(args.data))
    print(f"{len(written)} smoothed results; table: aubench leaderboard {' '.join(args.runs)}", file=sys.stderr)
    return 0


def cmd_ensemble(args) -> int:
    from aubench.engine.postprocess import make_ensemble

    written = make_ensemble(args.runs, args.name, args.out, args.methods, args.weights, args.smooth,
                            args.overwrite, args.data)
    print(f"{len(written)} ensemble results in {Path(args.out) / 'results'}; table: aubench leaderboard "
          f"{' '.join(args.runs)} {args.out}", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from dataclasses import replace

    from aubench.bench import benchmark_method
    from aubench.engine.distributed import resolve_device
    from aubench.engine.evaluate import resolve_methods
    from aubench.models import method_class
    from aubench.models.base import check_stages, tested_stages

    if args.out:
        from aubench.files import check_output

        check_output("--out", args.out)  # before any measuring
    device = resolve_device(args.device)
    records = []
    header = f"{'method':>10} {'preset':>6} {'params M':>9} {'GFLOPs/f':>9} {'infer f/s':>10} {'train f/s':>10}  setting"
    print(header)
    for method in resolve_methods(args.methods):
        cls = method_class(method)
        if args.preset not in cls.presets:
            raise UserError(f"method {method!r} has no preset {args.preset!r}; presets: {', '.join(sorted(cls.presets))}")
        # one record per leaderboard row of a method whose stages are rows, else one (its last stage)
        preset = cls.presets[args.preset]
        preset = replace(preset, model={**preset.model, **_model_overrides(args.model)})
        for stage in tested_stages(check_stages(method, list(cls.stages(preset)))):
            try:
                r = benchmark_method(method, args.num_aus, args.preset, device, args.batch_size, args.precision,
                                     args.channels_last, args.warmup, args.iters, train=not args.no_train,
                                     image_size=args.image_size, stage=stage.name,
                                     model_overrides=_model_overrides(args.model))
            except ValueError as err:  # a setting the method refuses (BackboneError is one too)
                raise UserError(f"method {method!r} (stage {stage.name!r}): {err}") from None
            records.append(r)
            train = f"{r['train_frames_per_s']:10.1f}" if "train_frames_per_s" in r else f"{'-':>10}"
            occluded = f", train occlusion {r['occlusion']}" if r["occlusion"] != "none" else ""
            print(f"{r['method']:>10} {r['preset']:>6} {r['params_m']:9.2f} {r['gflops_per_frame']:9.3f} "
                  f"{r['infer_frames_per_s']:10.1f} {train}  batch {r['batch_size']} ({r['frames_per_batch']} "
                  f"frames), {r['image_size']}px, {r['precision']}, channels_last={r['channels_last']}, "
                  f"{r['device']}{occluded}", flush=True)
    if args.out:
        from aubench.files import why_unwritable, write_json_atomic

        try:
            write_json_atomic(args.out, records)
        except OSError as err:
            raise UserError(f"--out {args.out}: cannot write ({why_unwritable(args.out, err)})") from None
    return 0


def cmd_leaderboard(args) -> int:
    from aubench import leaderboard
    from aubench.files import check_output, why_unwritable, write_text_atomic

    results = leaderboard.find_results(args.runs)
    if args.out:
        check_output("--out", args.out, [r["_file"] for r in results])
    failed = leaderboard.verify_results(results, args.data) if args.verify else {}
    for file, problem in failed.items():
        print(f"aubench: verify: {file}: {problem}", file=sys.stderr)
    results = [r for r in results if r["_file"] not in failed]
    if not results:
        return 1
    rows = leaderboard.build_rows(results, include_reported=not args.no_reported, merge=args.merge)
    text = leaderboard.render(rows, args.format)
    if args.plot:  # first: a plot path that cannot be written stops before any table is out
        for path in leaderboard.plot(rows, args.plot, reported=args.plot_reported):
            print(f"plot: {path}", file=sys.stderr)
    if args.out:
        try:
            write_text_atomic(args.out, text)  # creates missing folders
        except OSError as err:
            raise UserError(f"--out {args.out}: cannot write ({why_unwritable(args.out, err)})") from None
        print(f"table: {args.out}", file=sys.stderr)
    else:
        print(text)
    if args.verify:
        print(f"verify: {len(results)} result(s) match their predictions, {len(failed)} do not", file=sys.stderr)
    return 1 if failed else 0


def _preset_summary(preset, model_keys: list[str]) -> str:
    """What a preset sets, in words: its training fields and the model settings `model_keys`."""
    size = f"{preset.image_size} px"
    if preset.crop_fraction is not None:
        size += (f" cropped from {round(preset.image_size / preset.crop_fraction)} px (at random in training, the "
                 f"centre at test)")
    optimiser = f"{preset.optimizer} lr {preset.lr:g}" + (f" momentum {preset.momentum:g}"
                                                          if preset.optimizer == "sgd" else "")
    optimiser += f" weight decay {preset.weight_decay:g}" + (f" -> {preset.weight_decay_end:g}"
                                                             if preset.weight_decay_end is not None else "")
    optimiser += f", {preset.schedule}" + (f" after {preset.warmup_epochs} warm-up epochs"
                                           if preset.warmup_epochs else "")
    parts = [size, f"{preset.epochs} epochs", f"batch {preset.batch_size}", optimiser,
             f"rotation {preset.rotation:g} deg"]
    if preset.clip_len > 1:
        parts.append(f"{preset.clip_len}-frame clips")
    if preset.train_occlusion != "none":
        parts.append(f"training occlusion {preset.train_occlusion}")
    def short(value):  # floats to 4 significant digits (2/3, not 0.6666666666666666)
        if isinstance(value, dict):
            return {k: short(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [short(v) for v in value]
        return float(f"{value:.4g}") if isinstance(value, float) else value

    model = [f"{key}={json.dumps(short(preset.model[key]))}" for key in model_keys if key in preset.model]
    parts.append("model " + ", ".join(model) + " over the method's defaults" if model else "the method's default model")
    if preset.paper_init:
        parts.append(f"the paper starts from {preset.paper_init} weights (--pretrained)")
    return "; ".join(parts)


def cmd_methods(args) -> int:
    from aubench.models import available_methods, method_class

    for name in available_methods():
        cls = method_class(name)
        stages = cls.stages(next(iter(cls.presets.values())))
        head = f"{name}  ({cls.input_kind} method"
        head += f"; stages: {' -> '.join(stage.name for stage in stages)}" if len(stages) > 1 else ""
        rows = [f"{name}-{stage.row} ({stage.name})" for stage in stages if stage.row is not None]
        head += f"; rows: {', '.join(rows)}" if rows else ""
        if cls.dataset_presets:
            head += "; paper on " + ", ".join(f"{dataset}: {preset}" for dataset, preset in cls.dataset_presets.items())
            head += ", other datasets: paper"
        print(head + ")")
        # the model settings that tell the method's presets apart (the rest are the method's defaults)
        settings = [p.model for p in cls.presets.values()]
        keys = [key for key in dict.fromkeys(k for model in settings for k in model)
                if len({json.dumps(model.get(key), sort_keys=True) for model in settings}) > 1]
        width = max(map(len, cls.presets))
        for preset_name, preset in sorted(cls.presets.items()):
            print(f"  {preset_name:<{width}}  {_preset_summary(preset, keys)}")
            if preset.source:
                print(f"  {'':<{width}}  source: {preset.source}")
        for i, (part, what) in enumerate(cls.pretrained_parts.items()):  # the first is a bare SOURCE's
            print(f"  --pretrained {part}=SOURCE{' (or SOURCE)' if i == 0 else ''}: {what}")
    return 0


def cmd_plot(args) -> int:
    from aubench.plot import plot_run

    print(f"curves: {plot_run(Path(args.run), None if args.out is None else Path(args.out))}", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from aubench.demo import run_demo

    return run_demo(args.out, args.methods, args.device, args.seed)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predictions": cmd_predictions, "predict": cmd_predict,
            "smooth": cmd_smooth,
            "ensemble": cmd_ensemble, "bench": cmd_bench,
            "leaderboard": cmd_leaderboard, "methods": cmd_methods, "plot": cmd_plot, "demo": cmd_demo}


# Options whose value may start with '-' (a negative number), which argparse takes for an option:
# "--weights -1,2" is read as "--weights=-1,2", so the value itself is checked and explained.
NUMBER_LIST_OPTIONS = ("--weights",)
_NUMBER_LIST = re.compile(r"-[0-9.][0-9.eE+,-]*")


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] in NUMBER_LIST_OPTIONS and _NUMBER_LIST.fullmatch(arg):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # --help, or a bad argument (_Parser.error has printed it)
        return stop.code if isinstance(stop.code, int) else EXIT_USER_ERROR
    try:
        import aubench.models  # noqa: F401  (registers the methods)

        return COMMANDS[args.command](args)
    except UserError as err:
        return _print_error(f"aubench: error: {err}", err.exit_code)
    except KeyboardInterrupt:  # Ctrl-C reaches every rank of a torchrun job: rank 0 says it
        if _other_rank() is None:
            print("aubench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        from aubench.engine.distributed import cleanup_distributed

        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
