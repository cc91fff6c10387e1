"""The README and docs/ say what the repository holds: the two commands first, links that resolve,
and figures that come from the committed result files."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import glance  # noqa: E402

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_opens_with_the_two_commands_and_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300
    block = lines[lines.index("```") + 1:lines.index("```", lines.index("```") + 1)]
    assert [line.split()[:2] for line in block] == [["make", "demo"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    missing = [target for target in LINK.findall(page.read_text())
               if "://" not in target and not target.startswith("mailto:")
               and not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_result_files_parse_and_each_is_described_in_results_md():
    results = (ROOT / "docs" / "results.md").read_text()
    files = sorted((ROOT / "docs" / "results").glob("*.json"))
    assert files
    for path in files:
        json.loads(path.read_text())
        assert f"results/{path.name}" in results, f"docs/results.md does not describe {path.name}"


def test_readme_glance_is_written_from_the_result_files():
    readme = (ROOT / "README.md").read_text()
    body = readme.split(glance.BEGIN, 1)[1].split(glance.END, 1)[0].strip()
    assert body == glance.section(), "README's results are stale: run python benchmarks/glance.py --write"
    assert body.count("](docs/results/") == len(body.splitlines())


def test_results_md_tables_are_written_from_the_result_files():
    results = (ROOT / "docs" / "results.md").read_text()
    for begin, table in glance.tables().items():
        assert begin in results
        assert results.split(begin, 1)[1].split("<!-- /table -->", 1)[0].strip() == table, \
            "docs/results.md is stale: run python benchmarks/glance.py --write"


def test_cifar_line_names_a_best_row_only_when_one_beats_l1():
    def row(method, top1, removed=0.5):
        return {"method": method, "top1": top1, "macs_reduction": removed, "no_finetune_recalibrated": 0.3,
                "no_finetune_reconstructed": 0.6, "vs_l1": {"mean": top1 - 0.7, "se": 0.001}}
    d = {"model": "vgg16", "seeds": [0, 1], "dense_starts": {"0": {"test": 0.8}, "1": {"test": 0.8}},
         "protocol": {"method_epochs": 4}, "rows": [row("dense", 0.85, 0.0), row("l1", 0.7)]}
    line = glance.cifar(d, "cifar10-vgg16.json")
    assert "l1 70.00%." in line and "best" not in line
    d["rows"].append(row("l1+rec", 0.71))
    assert "best l1+rec 71.00% (+1.00 ± 0.10 points against l1)" in glance.cifar(d, "cifar10-vgg16.json")
