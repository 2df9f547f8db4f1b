"""Print the speed ratios of a pytest-benchmark run: baseline time / aubench time per group.

Every benchmark marks its implementation in extra_info["impl"] ("aubench" for ours, a baseline
name otherwise) and shares a group with the baselines it is compared to, measured in the same
run. A ratio above 1 means aubench is faster.

    python benchmarks/summary.py [results.json ...]     (default: benchmarks/results/latest.json)
    python benchmarks/summary.py --run [pytest args]     (run the CPU benchmarks first)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "latest.json"


def load_groups(paths: list[Path]) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """{group: {impl: median seconds}} and each file's machine_info."""
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    machines = []
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"cannot read benchmark results {path}: {error}")
        machines.append(report.get("machine_info", {}))
        for bench in report.get("benchmarks", []):
            impl = bench.get("extra_info", {}).get("impl")
            if impl is None:
                continue
            groups[bench.get("group") or bench["name"]][impl] = bench["stats"]["median"]
    return groups, machines


def ratio_rows(groups: dict[str, dict[str, float]]) -> list[tuple[str, str, float, float, float]]:
    rows = []
    for group in sorted(groups):
        impls = groups[group]
        if "aubench" not in impls:
            continue
        ours = impls["aubench"]
        for baseline, seconds in sorted(impls.items()):
            if baseline != "aubench":
                rows.append((group, baseline, ours, seconds, seconds / ours))
    return rows


def format_table(rows) -> str:
    lines = ["| benchmark | baseline | aubench (ms) | baseline (ms) | speed-up |",
             "|---|---|---:|---:|---:|"]
    for group, baseline, ours, theirs, ratio in rows:
        lines.append(f"| {group} | {baseline} | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", type=Path, help="pytest-benchmark JSON files")
    parser.add_argument("--run", action="store_true", help="run the benchmarks first (CPU ones here)")
    args, pytest_args = parser.parse_known_args(argv)
    paths = args.results or [DEFAULT_JSON]
    if args.run:
        DEFAULT_JSON.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pytest", str(HERE), "-q", "--benchmark-enable",
                   f"--benchmark-json={DEFAULT_JSON}", *pytest_args]
        if subprocess.call(command) != 0:
            return 1
        paths = [DEFAULT_JSON]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"no benchmark results at {missing[0]}: run `make bench` first")
    groups, machines = load_groups(paths)
    for info in machines:
        print(f"device: {info.get('aubench_device', '?')}, torch {info.get('torch', '?')}, "
              f"extension: {info.get('aubench_extension', '?')}")
    print(format_table(ratio_rows(groups)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
