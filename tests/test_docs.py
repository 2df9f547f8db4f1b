"""README.md and docs/: the generated blocks (docs/make_docs.py) agree with the committed result
JSON, every results file is shown by some block, and every relative link points to a file."""
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "docs" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE_DOCS = load_make_docs()
PAGES = MAKE_DOCS.pages()
PAGES_WITH_BLOCKS = [page for page in PAGES if MAKE_DOCS.BLOCK.search(page.read_text(encoding="utf-8"))]
# the pages with a figure in a block (a block may hold only a sentence)
PAGES_WITH_FIGURES = [page for page in PAGES_WITH_BLOCKS if any(
    re.search(r"\d", match.group("body")) for match in MAKE_DOCS.BLOCK.finditer(page.read_text(encoding="utf-8")))]


def test_the_pages_are_the_readme_and_every_markdown_page_under_docs():
    assert PAGES[0] == ROOT / "README.md"
    assert set(PAGES[1:]) == set((ROOT / "docs").rglob("*.md"))
    assert ROOT / "docs" / "methods" / "ks.md" in PAGES    # pages in sub-folders too


def test_every_page_is_what_the_json_gives(capsys):
    assert MAKE_DOCS.main(["--check"]) == 0, capsys.readouterr().err


def _edit_a_figure(body: str) -> str:
    """`body` with one digit of a table cell (or, without a table, of any figure) changed."""
    cell = re.search(r"\| [^|\d]*?(\d)", body) or re.search(r"\d", body)
    digit = cell.start(cell.lastindex or 0)
    return body[:digit] + str((int(body[digit]) + 1) % 10) + body[digit + 1:]


@pytest.mark.parametrize("page", PAGES_WITH_FIGURES, ids=lambda page: str(page.relative_to(ROOT)))
def test_a_hand_edited_figure_is_caught_on_every_page(page, tmp_path, capsys):
    """Change one figure inside the page's first generated block that shows one: the check fails
    naming the page's block, and a rebuild restores the page exactly."""
    text = page.read_text(encoding="utf-8")
    block = next(match for match in MAKE_DOCS.BLOCK.finditer(text) if re.search(r"\d", match.group("body")))
    body = block.group("body")
    copy = tmp_path / page.name
    copy.write_text(text.replace(body, _edit_a_figure(body), 1), encoding="utf-8")
    assert MAKE_DOCS.main(["--check", str(copy)]) == 1
    assert f"({MAKE_DOCS.block_label(block)})" in capsys.readouterr().err
    assert MAKE_DOCS.main([str(copy)]) == 0                 # rebuilt ...
    assert MAKE_DOCS.main(["--check", str(copy)]) == 0      # ... it agrees again
    assert copy.read_text(encoding="utf-8") == text


def test_an_unknown_block_or_a_missing_argument_is_named(tmp_path):
    for marker, said in (("<!-- make_docs: no-such-block -->", "unknown generated block 'no-such-block'"),
                         ("<!-- make_docs: presets -->", "'presets' takes an argument")):
        page = tmp_path / "page.md"
        page.write_text(f"{marker}\n<!-- /make_docs -->\n", encoding="utf-8")
        with pytest.raises(SystemExit, match=re.escape(said)):
            MAKE_DOCS.main(["--check", str(page)])


def test_every_results_file_is_shown_by_a_block_in_some_page(monkeypatch):
    """Each benchmarks/results/*.json is named by a generated block of some page (every block
    names the files its figures come from), the list of machines aside."""
    monkeypatch.setitem(MAKE_DOCS.BLOCKS, "machines", lambda: "")
    shown = "".join(match.group("body") for page in PAGES_WITH_BLOCKS
                    for match in MAKE_DOCS.BLOCK.finditer(MAKE_DOCS.render(page.read_text(encoding="utf-8"), page)))
    committed = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "benchmarks" / "results").glob("*.json")
                       if path.name != "latest.json")
    assert [path for path in committed if path not in shown] == []


def test_the_gpu_check_block_shows_a_report_or_says_there_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(MAKE_DOCS, "RESULTS", tmp_path)
    assert MAKE_DOCS.gpu_check_block().startswith("No GPU has run the check yet")
    report = {"dry_run": False, "device": "cuda (NVIDIA H100)", "cuda_kernels": True, "created": "2026-12-08",
              "steps": {"ops": {"result": {"sinkhorn forward B4096 K12": {"speedup": {"reference": 12.5}}}},
                        "methods": {"result": {"ks": {"preset": "paper", "precision": "bf16", "batch_size": 16,
                                                      "infer_frames_per_s": 2500.0, "train_frames_per_s": 800.0,
                                                      "peak_memory_gib": 3.25},
                                               "vivit": {"error": "out of memory at batch 2"}}},
                        "torchrun": {"error": "RuntimeError: NCCL"}}}
    (tmp_path / "gpu-nvidia-h100-20261208.json").write_text(json.dumps(report), encoding="utf-8")
    block = MAKE_DOCS.gpu_check_block()
    for text in ("gpu-nvidia-h100-20261208.json", "cuda (NVIDIA H100), CUDA kernels built", "reference 12.50x",
                 "| ks | paper, bf16, 16 | 2500 | 800 | 3.2 |", "| vivit | out of memory at batch 2 |",
                 "Failed steps: torchrun (RuntimeError: NCCL)"):
        assert text in block, text


def test_the_preset_tables_follow_the_code():
    """The presets table shows the values the code defines."""
    from aubench.models import method_class

    preset = method_class("ks").presets["tiny"]
    assert f"| `tiny` | train | {preset.epochs} | {preset.batch_size} |" in MAKE_DOCS.presets_block("ks")


def test_a_changed_figure_is_caught(tmp_path, monkeypatch):
    """Each FIGURES image is compared by its pixels with what its JSON draws (the committed image,
    as the check above proves, stands in for the drawing here): swap two committed images, and
    both are named and, with write, redrawn; the third, untouched, is not."""
    import shutil

    def committed_drawing(name, folder):
        folder.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(ROOT / "docs" / name, folder / name))

    names = list(MAKE_DOCS.FIGURES)
    for name in names:
        shutil.copyfile(ROOT / "docs" / name, tmp_path / name)
    shutil.copyfile(ROOT / "docs" / names[0], tmp_path / names[1])
    shutil.copyfile(ROOT / "docs" / names[1], tmp_path / names[0])
    monkeypatch.setattr(MAKE_DOCS, "DOCS", tmp_path)
    monkeypatch.setattr(MAKE_DOCS, "draw_figure", committed_drawing)
    stale = [f"docs/{names[0]} (figure)", f"docs/{names[1]} (figure)"]
    assert MAKE_DOCS.stale_figures(write=False) == stale
    assert MAKE_DOCS.stale_figures(write=True) == stale
    assert MAKE_DOCS.stale_figures(write=False) == []
    assert all((tmp_path / name).read_bytes() == (ROOT / "docs" / name).read_bytes() for name in names)


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_every_picture_of_the_pages_is_one_the_script_knows():
    """Each image a page shows is drawn from JSON by make_docs (FIGURES) or said where it comes
    from (OTHER_FIGURES)."""
    known = set(MAKE_DOCS.FIGURES) | set(MAKE_DOCS.OTHER_FIGURES)
    for page in PAGES:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            assert Path(target).name in known, f"{page.relative_to(ROOT)}: {target} is drawn by no known script"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):          # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_every_results_file_names_its_machine_or_says_it_was_not_recorded():
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        m = MAKE_DOCS.machine(json.loads(path.read_text(encoding="utf-8")))
        text = MAKE_DOCS.machine_text(m)
        assert m["cpu"] or text.startswith(MAKE_DOCS.NOT_RECORDED), path
        if m["cpu"]:
            assert (m["kernels"] or m["flags"]) and m["torch"], f"{path}: {text}"


def test_machine_of_a_result_with_cpu_info():
    from aubench.bench import cpu_info

    info = cpu_info()
    m = MAKE_DOCS.machine([{"device": "cpu (...)", "cpu": info}])
    assert (m["cpu"], m["kernels"], m["threads"], m["torch"]) == (info["brand"], info["capability"],
                                                                 info["threads"], info["torch"])
    assert info["capability"] in MAKE_DOCS.machine_text(m)
