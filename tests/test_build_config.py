"""The extension's build decision (build_config.py), with the environment and the probes faked."""
from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_config", ROOT / "build_config.py")
build_config = importlib.util.module_from_spec(_spec)
sys.modules["build_config"] = build_config  # dataclasses look their module up there
_spec.loader.exec_module(build_config)
decide, BuildConfigError = build_config.decide, build_config.BuildConfigError


def _executable(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def toolkit(tmp_path) -> str:
    """A folder shaped like a CUDA toolkit root: bin/nvcc and lib64/libcudart.so."""
    root = tmp_path / "cuda-13.0"
    _executable(root / "bin" / "nvcc")
    (root / "lib64").mkdir()
    (root / "lib64" / "libcudart.so.13").write_bytes(b"")
    return str(root)


def _no_gpu() -> bool:
    return False


def _gpu() -> bool:
    return True


def _must_not_probe() -> bool:
    raise AssertionError("the GPU probe should not be needed here")


def test_no_toolkit_builds_cpu_silently(tmp_path):
    plan = decide({}, "13.0", _gpu, [str(tmp_path / "nothing")])
    assert (plan.cuda, plan.notice) == (False, False)
    assert "no CUDA toolkit" in plan.reason


def test_cpu_build_of_torch_builds_cpu_silently(toolkit):
    plan = decide({}, None, _must_not_probe, [toolkit])
    assert (plan.cuda, plan.notice) == (False, False)
    assert "CPU build" in plan.reason


def test_toolkit_without_gpu_builds_cpu_and_says_how_to_get_cuda(toolkit):
    plan = decide({}, "13.0", _no_gpu, [toolkit])
    assert (plan.cuda, plan.notice) == (False, True)
    assert toolkit in plan.reason
    assert "AUBENCH_CUDA=1" in plan.reason and "TORCH_CUDA_ARCH_LIST" in plan.reason
    assert "\n" not in plan.reason


def test_toolkit_and_gpu_build_cuda_for_that_gpu(toolkit):
    plan = decide({}, "13.0", _gpu, [toolkit])
    assert (plan.cuda, plan.cuda_home, plan.arch_list, plan.notice) == (True, toolkit, None, False)


def test_arch_list_is_honoured_without_a_gpu(toolkit):
    plan = decide({"TORCH_CUDA_ARCH_LIST": "9.0"}, "13.0", _must_not_probe, [toolkit])
    assert (plan.cuda, plan.arch_list) == (True, "9.0")


def test_forced_cuda_with_arch_list(toolkit):
    plan = decide({"AUBENCH_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "8.0;9.0"}, "13.0", _no_gpu,
                  ["/nonexistent", toolkit])
    assert (plan.cuda, plan.cuda_home, plan.arch_list) == (True, toolkit, "8.0;9.0")


def test_forced_cuda_without_toolkit_names_what_was_looked_at(tmp_path):
    looked = [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(BuildConfigError, match="AUBENCH_CUDA=1") as error:
        decide({"AUBENCH_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0"}, "13.0", _gpu, looked)
    assert all(path in str(error.value) for path in looked)


def test_forced_cuda_with_cpu_torch_fails(toolkit):
    with pytest.raises(BuildConfigError, match="CPU build"):
        decide({"AUBENCH_CUDA": "1"}, None, _gpu, [toolkit])


def test_forced_cuda_without_gpu_or_arch_list_asks_for_the_arch(toolkit):
    with pytest.raises(BuildConfigError, match="TORCH_CUDA_ARCH_LIST"):
        decide({"AUBENCH_CUDA": "1"}, "13.0", _no_gpu, [toolkit])


def test_cuda_forbidden(toolkit):
    plan = decide({"AUBENCH_CUDA": "0", "TORCH_CUDA_ARCH_LIST": "9.0"}, "13.0", _must_not_probe,
                  [toolkit])
    assert (plan.cuda, plan.notice) == (False, False)


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_unknown_flag_value_is_an_error(value, toolkit):
    with pytest.raises(BuildConfigError, match=f"AUBENCH_CUDA='{value}'"):
        decide({"AUBENCH_CUDA": value}, "13.0", _gpu, [toolkit])


def test_a_folder_without_the_runtime_library_is_no_toolkit_root(tmp_path):
    _executable(tmp_path / "bin" / "nvcc")
    assert not build_config.is_cuda_root(str(tmp_path))
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libcudart.so").write_bytes(b"")
    assert build_config.is_cuda_root(str(tmp_path))


def test_nvcc_wrapper_folder_is_skipped_for_the_real_root(tmp_path, toolkit):
    # /usr/local/bin/nvcc as a wrapper script: /usr/local holds bin/nvcc but no runtime library.
    prefix = tmp_path / "usr_local"
    wrapper = _executable(prefix / "bin" / "nvcc", f"#!/bin/sh\nexec {toolkit}/bin/nvcc \"$@\"\n")
    candidates = build_config.cuda_root_candidates({}, which=lambda _: str(wrapper),
                                                   system_roots=[toolkit])
    assert candidates == [str(prefix), toolkit]
    assert build_config.find_cuda_root(candidates) == toolkit


def test_nvcc_symlink_is_resolved_to_its_root(tmp_path, toolkit):
    link = tmp_path / "bin" / "nvcc"
    link.parent.mkdir()
    os.symlink(Path(toolkit) / "bin" / "nvcc", link)
    candidates = build_config.cuda_root_candidates({"CUDA_HOME": str(tmp_path / "stale")},
                                                   which=lambda _: str(link), system_roots=[])
    assert candidates == [str(tmp_path / "stale"), os.path.realpath(toolkit)]
    assert build_config.find_cuda_root(candidates) == os.path.realpath(toolkit)


def test_command_line_reports_the_decision_for_this_machine():
    env = {k: v for k, v in os.environ.items() if k not in ("AUBENCH_CUDA", "TORCH_CUDA_ARCH_LIST")}
    env["AUBENCH_CUDA"] = "0"
    done = subprocess.run([sys.executable, str(ROOT / "build_config.py")], env=env,
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "aubench build: CPU kernels only (AUBENCH_CUDA=0)"
    quiet = subprocess.run([sys.executable, str(ROOT / "build_config.py"), "--notice"], env=env,
                           capture_output=True, text=True, check=True)
    assert quiet.stdout == ""
    env["AUBENCH_CUDA"] = "maybe"
    bad = subprocess.run([sys.executable, str(ROOT / "build_config.py")], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "AUBENCH_CUDA='maybe'" in bad.stderr
