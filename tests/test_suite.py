"""How the suite runs: every test has a time limit, and the markers are declared and run by ``make test``."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_has_a_time_limit(pytestconfig):
    assert pytestconfig.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed (the test extra)"
    assert 0 < float(pytestconfig.getini("timeout")) <= 600


def test_the_zoo_and_slow_markers_are_declared_and_make_test_runs_them(pytestconfig):
    declared = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    assert {"zoo", "slow"} <= declared
    recipe = ROOT.joinpath("Makefile").read_text().split("\ntest:")[1].split("\n\n")[0]
    assert "-m pytest" in recipe and " -m " not in recipe.replace("-m pytest", "")  # nothing deselected
    assert "-m" not in pytestconfig.getini("addopts")
    assert "zoo" in ROOT.joinpath("docs", "testing.md").read_text()
