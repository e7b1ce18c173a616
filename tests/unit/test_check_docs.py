"""benchmarks/check_docs.py: the repository's cited numbers match their result files, and a doctored copy fails."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "check_docs.py"


def _checker():
    spec = importlib.util.spec_from_file_location("lerpray_check_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy(tmp_path: Path) -> Path:
    """README.md, docs/*.md and benchmarks/results/ of this checkout, in a folder of their own."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    shutil.copy(ROOT / "README.md", root / "README.md")
    for doc in (ROOT / "docs").glob("*.md"):
        shutil.copy(doc, root / "docs" / doc.name)
    shutil.copytree(ROOT / "benchmarks" / "results", root / "benchmarks" / "results")
    return root


def test_every_cited_number_in_the_repository_matches_its_result_file():
    done = subprocess.run([sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    checked = [line for line in done.stdout.splitlines() if " = " in line]
    assert len(checked) >= 150, f"only {len(checked)} numbers cite a result file"
    cited_docs = {line.split(":")[0] for line in checked}
    for doc in ("README.md", "docs/steering.md", "docs/performance.md", "docs/reproduction.md"):
        assert doc in cited_docs, f"{doc} cites no result file"


def test_a_doctored_number_fails(tmp_path):
    root = _copy(tmp_path)
    doc = root / "docs" / "steering.md"
    text = doc.read_text()
    assert "0.56<!--=single.formality.targets.0.achieved-->" in text
    doc.write_text(text.replace("0.56<!--=single.formality.targets.0.achieved-->",
                                "0.57<!--=single.formality.targets.0.achieved-->"))  # fmt: skip
    done = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert "docs/steering.md" in done.stderr and "0.57 does not match" in done.stderr, done.stderr


def test_a_doctored_result_file_fails(tmp_path):
    root = _copy(tmp_path)
    path = root / "benchmarks" / "results" / "target_accuracy_repro.json"
    doc = json.loads(path.read_text())
    doc["single"]["humor"]["targets"][2]["achieved"] = 0.52
    path.write_text(json.dumps(doc))
    problems, _ = _checker().check(root)
    assert any("0.48" in p and "single.humor.targets.2.achieved" in p for p in problems), problems


def test_unresolvable_cites_and_missing_files_are_problems(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "benchmarks" / "results" / "r.json").write_text(json.dumps({"a": {"b": [1.25, 2]}, "rows": [
        {"k": "x", "v": 3}, {"k": "y", "v": 4}]}))  # fmt: skip
    (root / "README.md").write_text(
        "<!-- results: r.json -->\n"
        "ok 1.3<!--=a.b.0--> and 1.25<!--=a.b.0--> and 7<!--=rows.[k=x].v + rows.[k=y].v--> and -1.25<!--=0 - a.b.0-->\n"
        "0.6x<!--=a.b.0 / a.b.1--> and 1.625<!--=mean(a.b)-->; 13%-62.5<!--=a.b.0 / a.b.1 * 100-->%\n"
        "bad 1.1<!--=a.b.0--> and 1<!--=a.nope--> and 2<!--=other.json:a--> and 3<!--=rows.[k=z].v-->\n"
        "see benchmarks/results/r.json and benchmarks/results/gone.json and benchmarks/results/suite_*.log\n")
    problems, checked = _checker().check(root)
    assert len(checked) == 7, checked
    assert len(problems) == 5, problems
    assert "1.1 does not match" in problems[0]  # 1.3 holds: 1.25 rounds either way
    assert "no key 'nope'" in problems[1]
    assert "no result file" in problems[2]
    assert "matches 0 rows" in problems[3]
    assert "gone.json, which does not exist" in problems[4]
