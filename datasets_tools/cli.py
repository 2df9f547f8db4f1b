"""``datasets_tools`` command line: convert, synth, verify, stats, info.

User errors (bad arguments, bad input files) print one line naming the file, line or argument
and exit with status 2, as argparse's own usage errors do; no traceback. The exit codes and the
options both command lines share (--quiet, --out) are datasets_tools.command_line's.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from .affwild2 import DEFAULT_KFOLDS as AFFWILD2_KFOLDS
from .affwild2 import SPLITS as AFFWILD2_SPLITS
from .command_line import (EXIT_BROKEN_PIPE, EXIT_CHECK_FAILED, EXIT_INTERRUPTED, EXIT_USER_ERROR, OneLineParser,
                           add_out, add_quiet)
from .convert import (DEFAULT_CROP, DEFAULT_IMAGE_SIZE, DEFAULT_LANDMARKS, LANDMARK_MODES, LAYOUT_DEFAULTS,
                      NO_FACE_POLICIES, READERS, FrameOptions, convert)
from .errors import DatasetError
from .face_detect import DEFAULT_MAX_SIDE
from .landmark_files import parse_offset
from .faces import CROPS
from .images import DEFAULT_SPLIT as IMAGES_DEFAULT_SPLIT
from .images import SPLITS as IMAGES_SPLITS

MAX_REPORTED_SKIPS = 20
FILE_HELP = "an HDF5 file written by `datasets_tools convert`"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a raw dataset tree into one HDF5 file",
                       description="Convert a raw BP4D / DISFA / BP4D+ / MME / Aff-Wild2 (ABAW) tree, or a "
                                   "folder tree of unlabeled face images (images) or videos (videos), into one "
                                   "HDF5 file (schema "
                                   "version 2) "
                                   "with the standard folds and statistics. The file is "
                                   "written as OUT.partial and renamed when complete; rerunning a killed "
                                   "conversion resumes it. One conversion at a time writes OUT: a run holds "
                                   "the lock OUT.lock (released by the OS if the run dies, even by kill -9), "
                                   "and a second run for the same OUT stops at once, naming the first one's "
                                   "pid. An existing OUT is refused unless --overwrite is given.")
    p.add_argument("dataset", choices=sorted(READERS), help="raw layout to read (images: a folder tree of "
                                                             "unlabeled face images; videos: of unlabeled "
                                                             "videos, one sequence each)")
    p.add_argument("raw_root", type=Path, help="the dataset's root folder, as shipped")
    add_out(p, "output .h5 file (written as OUT.partial, renamed when complete; locked by OUT.lock while a run "
               "writes it); a third positional argument is read as OUT too", type=Path, positional="out_positional",
            metavar="OUT")
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help=f"stored square side in pixels ({DEFAULT_IMAGE_SIZE}; affwild2: "
                        f"{LAYOUT_DEFAULTS['affwild2']['image_size']}, the size its faces ship at)")
    p.add_argument("--image-format", choices=("jpeg", "raw"), default="jpeg",
                   help="jpeg: JPEG bytes per frame (default); raw: uint8 HxWx3 arrays")
    p.add_argument("--crop", choices=CROPS, default=None,
                   help="face crop: none (resize whole frame; the default for affwild2, whose faces come cropped "
                        "and aligned), center (the default otherwise, but align for videos), haar (OpenCV cascade, centre "
                        "fallback), landmarks (square box around the landmarks), align (similarity transform "
                        "putting the eye centres and mouth at fixed places; 68-point landmarks)")
    p.add_argument("--landmarks", default=None, metavar="{" + ",".join(LANDMARK_MODES) + "}",
                   help="where the 68-point landmarks come from: file (the dataset's own landmark files when the "
                        "tree has them: BP4D/BP4D+/MME 2DFeatures/<Subject>_<Task>.mat, DISFA Landmark_Points/, "
                        "or the old Landmarks/<sequence>.csv; the default), detect (dlib's face detector and shape "
                        "predictor on every frame; needs pip install 'aubench[faces]'; the default for videos) or "
                        "none")
    p.add_argument("--landmarks-dir", type=Path, default=None,
                   help="landmark folder for --landmarks file (a 2DFeatures, Landmark_Points or <sequence>.csv "
                        "folder); default: the one found under the root")
    p.add_argument("--landmarks-offset", action="append", default=[], metavar="[NAME=]N",
                   help="--landmarks file: frame f takes the landmark files' frame f + N; NAME=N for one subject or "
                        "sequence (e.g. SN031=1), N for all (repeatable; the default 0)")
    p.add_argument("--no-face", choices=NO_FACE_POLICIES, default="skip",
                   help="a frame where --landmarks detect finds no face, or (with --crop landmarks|align) whose "
                        "landmark file has no usable entry, is skipped (default) or kept without landmarks (centre "
                        "crop); either way it is counted and listed in OUT.skipped.txt")
    p.add_argument("--predictor", type=Path, default=None,
                   help="--landmarks detect: a dlib 68-point shape predictor file (default: the one the faces "
                        "extra installs)")
    p.add_argument("--detect-max-side", type=_positive_int, default=DEFAULT_MAX_SIDE,
                   help=f"--landmarks detect: frames are shrunk to this longer side for the face detector "
                        f"({DEFAULT_MAX_SIDE}); the landmarks are placed at full resolution")
    p.add_argument("--images-split", choices=IMAGES_SPLITS, default=IMAGES_DEFAULT_SPLIT,
                   help="images and videos (unlabeled: no folds needed): none (the default), folds over the "
                        "top-level folders (folders, at least 3), or over a seeded random split of the "
                        "sequences, each folder of images or video whole in one fold (random, --folds-seed)")
    p.add_argument("--affwild2-split", choices=AFFWILD2_SPLITS, default="official",
                   help="affwild2: official (default; one fold: train on Train_Set, test on Validation_Set) or "
                        "kfold (--affwild2-folds folds over the Train_Set videos; Validation_Set left out); the "
                        "file's split_scheme attribute records it")
    p.add_argument("--affwild2-folds", type=_positive_int, default=AFFWILD2_KFOLDS,
                   help=f"affwild2 --affwild2-split kfold: number of folds ({AFFWILD2_KFOLDS})")
    p.add_argument("--camera", choices=("left", "right"), default="left", help="DISFA camera (left)")
    p.add_argument("--threshold", type=_positive_int, default=2, help="DISFA occurrence = intensity >= this (2)")
    p.add_argument("--workers", type=_positive_int, default=_default_workers(),
                   help="processes decoding frames (default: CPU count, at most 8)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad frames (missing/corrupt image, bad label row, ...) and list them in the "
                        "report instead of stopping at the first one")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT together with its side file OUT.skipped.txt (without this flag "
                        "an existing OUT is refused; resuming OUT.partial needs no flag)")
    p.add_argument("--folds-seed", type=int, default=0, help="seed of the balanced split when one is used (0)")
    add_quiet(p)
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    defaults = LAYOUT_DEFAULTS.get(args.dataset, {})
    mode, landmarks_dir = args.landmarks or defaults.get("landmarks", DEFAULT_LANDMARKS), args.landmarks_dir
    if mode not in LANDMARK_MODES:
        if not Path(mode).is_dir():
            raise DatasetError(f"--landmarks {mode!r}: choose one of {', '.join(LANDMARK_MODES)} (a landmark "
                               f"folder goes to --landmarks-dir)")
        mode, landmarks_dir = "file", Path(mode)  # the earlier spelling, --landmarks DIR
    crop = args.crop or defaults.get("crop", DEFAULT_CROP)
    image_size = args.image_size or defaults.get("image_size", DEFAULT_IMAGE_SIZE)
    options = FrameOptions(image_size=image_size, image_format=args.image_format, crop=crop,
                           landmarks=mode, no_face=args.no_face,
                           predictor=None if args.predictor is None else str(args.predictor),
                           detect_max_side=args.detect_max_side)
    offsets = dict(parse_offset(text) for text in args.landmarks_offset)
    result = convert(args.dataset, args.raw_root, args.out, options, landmarks_dir=landmarks_dir,
                     landmarks_offset=offsets,
                     camera=args.camera, threshold=args.threshold, workers=args.workers,
                     skip_bad=args.skip_bad, folds_seed=args.folds_seed, progress=not args.quiet,
                     overwrite=args.overwrite, images_split=args.images_split,
                     affwild2_split=args.affwild2_split, affwild2_folds=args.affwild2_folds)
    if result.resumed_sequences:
        print(f"resumed after {result.resumed_sequences} finished sequence(s) of an interrupted run")
    print(f"wrote {result.frames} frames ({result.sequences} sequences, {result.subjects} subjects) to {args.out}")
    print(f"folds: {result.split_source}")
    print(f"skipped {len(result.skips)} frame(s)" + (":" if result.skips else ""))
    if result.skips:
        counts: dict[str, int] = {}
        for skip in result.skips:
            counts[skip.kind] = counts.get(skip.kind, 0) + 1
        for kind, count in sorted(counts.items()):
            print(f"  {count:8d}  {kind}")
        for skip in result.skips[:MAX_REPORTED_SKIPS]:
            print(f"  {skip}")
        if len(result.skips) > MAX_REPORTED_SKIPS:
            print(f"  ... {len(result.skips) - MAX_REPORTED_SKIPS} more")
        print(f"  every skipped frame is listed in {result.skipped_listing}")
    if result.no_face_kept:
        print(f"kept {len(result.no_face_kept)} frame(s) without landmarks (no face found, or no usable landmark "
              f"entry); listed in {result.skipped_listing}")
    for note, count in sorted(result.notes.items()):
        print(f"note: {note} ({count} frame(s))")
    return 0


def _add_synth(sub) -> None:
    try:
        synth = importlib.import_module(f"{__package__}.synth")
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.synth":
            raise
        synth = None
    p = sub.add_parser("synth", help="write a synthetic raw dataset tree (BP4D / DISFA / BP4D+ / MME / Aff-Wild2 "
                                     "layout)")
    if synth is None:
        p.set_defaults(func=lambda args: _fail("the synthetic generator (datasets_tools.synth) is not installed"))
        return
    synth.add_arguments(p)

    def run_synth(args) -> int:
        try:
            synth.run(args)
        except (ValueError, FileNotFoundError) as e:  # the generator's user errors
            raise DatasetError(str(e)) from None
        return 0

    p.set_defaults(func=run_synth)


def _fail(message: str) -> int:
    raise DatasetError(message)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check a converted file (schema, counts, folds, images, statistics)")
    p.add_argument("file", type=Path, help=FILE_HELP)
    p.add_argument("--workers", type=_positive_int, default=_default_workers(), help="processes decoding images")
    p.add_argument("--no-images", action="store_true", help="skip decoding every image")
    add_quiet(p)
    p.set_defaults(func=_run_verify)


def _run_verify(args) -> int:
    from .verify import verify
    problems = verify(args.file, workers=args.workers, progress=not args.quiet, check_images=not args.no_images)
    if problems:
        print(f"{args.file}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems[:50]:
            print(f"  {problem}", file=sys.stderr)
        if len(problems) > 50:
            print(f"  ... {len(problems) - 50} more", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"{args.file}: OK")
    return 0


def _add_stats(sub) -> None:
    p = sub.add_parser("stats", help="per-AU rates, AU combinations, subjects, sequences, frames, per fold")
    p.add_argument("file", type=Path, help=FILE_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_stats)


def _run_stats(args) -> int:
    from .stats import compute_stats, format_stats, stats_json
    try:
        stats = compute_stats(args.file)
    except (OSError, RuntimeError) as e:  # h5py on damaged bytes
        raise _damaged(args.file, e) from None
    print(stats_json(stats) if args.json else format_stats(stats))
    return 0


def _damaged(path: Path, error: Exception) -> DatasetError:
    return DatasetError(f"cannot read ({error}); the file looks damaged: check it with `datasets_tools verify`",
                        str(path))


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="attributes, datasets and folds of a converted file")
    p.add_argument("file", type=Path, help=FILE_HELP)
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
    from .stats import format_info
    try:
        info = format_info(args.file)
    except (OSError, RuntimeError) as e:  # h5py on damaged bytes
        raise _damaged(args.file, e) from None
    print(info)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="datasets_tools", description="AU dataset converter and tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert(sub)
    _add_synth(sub)
    _add_verify(sub)
    _add_stats(sub)
    _add_info(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DatasetError as e:
        print(f"datasets_tools {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"datasets_tools {args.command}: interrupted" + (
            "; rerun the same command to resume" if args.command == "convert" else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
