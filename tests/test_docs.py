"""The README's generated blocks (docs/make_docs.py) agree with the committed result JSON."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "docs" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_are_what_the_json_gives(capsys):
    make_docs = load_make_docs()
    assert make_docs.main(["--check"]) == 0, capsys.readouterr().err


def test_a_hand_edited_figure_is_caught(tmp_path, monkeypatch, capsys):
    """Change one figure inside a generated block: the check names the block and fails."""
    make_docs = load_make_docs()
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = make_docs.BLOCK.search(text)
    assert block is not None, "README.md has no generated block"
    body = block.group("body")
    digit = next(i for i, c in enumerate(body) if c.isdigit())
    edited = body[:digit] + str((int(body[digit]) + 1) % 10) + body[digit + 1:]
    readme.write_text(text.replace(body, edited, 1), encoding="utf-8")
    monkeypatch.setattr(make_docs, "README", readme)
    assert make_docs.main(["--check"]) == 1
    assert block.group("name") in capsys.readouterr().err
    assert make_docs.main([]) == 0                 # rebuilt ...
    assert make_docs.main(["--check"]) == 0        # ... it agrees again
    assert readme.read_text(encoding="utf-8") == text


def test_every_results_file_names_its_machine_or_says_it_was_not_recorded():
    make_docs = load_make_docs()
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        m = make_docs.machine(json.loads(path.read_text(encoding="utf-8")))
        text = make_docs.machine_text(m)
        assert m["cpu"] or text.startswith(make_docs.NOT_RECORDED), path
        if m["cpu"]:
            assert (m["kernels"] or m["flags"]) and m["torch"], f"{path}: {text}"


def test_machine_of_a_result_with_cpu_info():
    from aubench.bench import cpu_info

    make_docs = load_make_docs()
    info = cpu_info()
    m = make_docs.machine([{"device": "cpu (...)", "cpu": info}])
    assert (m["cpu"], m["kernels"], m["threads"], m["torch"]) == (info["brand"], info["capability"],
                                                                 info["threads"], info["torch"])
    assert info["capability"] in make_docs.machine_text(m)
