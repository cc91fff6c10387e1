"""benchmarks/zoo.py: one small model through the subprocess path; a hang is recorded, not waited for."""

import importlib.util
import math
import sys

import pytest
import torch
from helpers import benchmark_script

HAVE_TP = importlib.util.find_spec("torch_pruning") is not None


@pytest.fixture(scope="module")
def zoo():
    with benchmark_script("zoo") as module:  # imports zoo_plot as a sibling
        yield module


@pytest.fixture(scope="module")
def zoo_plot(zoo):
    return sys.modules["zoo_plot"]  # imported by zoo.py


def _args(zoo, *extra):
    flags = ["--size", "64", "--batches", "1", "2", "--repeats", "1", "--warmup", "0", "--timeout", "600"]
    return zoo.parse(flags + ([] if HAVE_TP else ["--no-tp"]) + list(extra))


def test_one_model_in_a_subprocess_records_every_figure(zoo, zoo_plot, tmp_path):
    record = zoo.run_isolated("resnet18", tmp_path / "resnet18.json", _args(zoo, "--fold-bn", "--channels-last"))
    assert "failure" not in record, record.get("failure")
    assert record["stage"] == "done" and record["input"] == [1, 3, 64, 64] and record["threads"] == 2
    fx = record["fxprune"]
    assert fx["ok"] and fx["equivalence_error"] <= 1e-4
    assert 0 < fx["prepare_s"] and 0 < fx["finalize_s"] and fx["total_s"] >= fx["prepare_s"] + fx["finalize_s"]
    assert 0 < fx["macs_after"] < record["macs_before"] and 0 < fx["params_after"] < record["params_before"]
    assert fx["output_layers"] == ["fc"] and fx["round_to"]["round_to"] == 8
    assert 0 < fx["trace_s"] < fx["prepare_s"]  # torch.fx's own trace: part of prepare's work
    unfolded = {"before", "fxprune"} | ({"tp"} if HAVE_TP else set())
    variants = ("+fold", "+nhwc", "+fold+nhwc")
    pruned = unfolded | {"fxprune_round8"}
    labels = pruned | {label + suffix for label in pruned for suffix in variants}
    for batch in ("1", "2"):
        ms = record["latency_ms"][batch]
        assert set(ms) == labels and all(t > 0 for t in ms.values())
        assert set(record["speedup"][batch]) == labels - {"before", "before+fold", "before+nhwc", "before+fold+nhwc"}
        for label, speedup in record["speedup"][batch].items():
            base = "before" + zoo_plot.variant(label)  # folded against folded, channels_last against channels_last
            assert math.isclose(speedup, ms[base] / ms[label])
            macs_ratio = record["macs_before"] / zoo._macs_after(record, label)
            assert math.isclose(record["efficiency"][batch][label], speedup / macs_ratio)
    if HAVE_TP:
        tp = record["tp"]
        assert tp["ok"] and tp["same_output_shapes"] and tp["ignored"] == ["fc"]
        assert tp["masked_error"] <= 1e-4  # resnet18 is a case Torch-Pruning prunes exactly
        assert tp["total_s"] == pytest.approx(tp["pruner_s"] + tp["step_s"])
        floor = zoo_plot.summary([record], 2)
        assert floor["floor_models"] == 1
        assert floor["floor_ratio"] == pytest.approx((fx["trace_s"] + fx["check_s"]) / tp["total_s"])
    text = zoo_plot.write_report(tmp_path, {"batches": [1, 2]}, [record], 2)
    assert "fxprune pruned 1" in text and "resnet18" in (tmp_path / "zoo.md").read_text()
    efficiency = zoo_plot.summary([record], 2)["median_efficiency_b2"]
    assert efficiency["fxprune"] > 0 and efficiency["fxprune+fold"] > 0 and efficiency["fxprune+nhwc"] > 0
    assert "fxprune in channels_last" in text and "fxprune with BatchNorm folded, in channels_last" in text
    assert "fxprune_round8 in channels_last" in text  # round_to's effect in each layout
    if importlib.util.find_spec("matplotlib"):
        assert [p[2] for p in zoo_plot.points([record], "2", "fxprune")] == ["resnet18"]
        assert (tmp_path / "zoo.png").stat().st_size > 0


def test_a_model_past_the_timeout_is_killed_and_recorded(zoo, zoo_plot, tmp_path):
    record = zoo.run_isolated("resnet18", tmp_path / "r.json", _args(zoo, "--timeout", "1"))
    assert record["model"] == "resnet18" and record["failure"].startswith("timed out after 1 s")
    assert "resnet18" in zoo_plot.summary([record], 2)["failures"] and "resnet18" in zoo_plot.table([record], 2)


def test_latency_over_the_budget_is_skipped_and_said(zoo):
    args = zoo.parse(["--batches", "1", "2", "--max-gmacs", "0.2", "--repeats", "1", "--warmup", "0"])
    record = {"input": [1, 3, 8, 8], "macs_before": int(0.15e9), "latency_ms": {}, "latency_skipped": {},
              "speedup": {}, "efficiency": {}}
    zoo.measure_latency({"before": torch.nn.Conv2d(3, 4, 3)}, record, args)
    assert list(record["latency_ms"]) == ["1"] and record["latency_ms"]["1"]["before"] > 0
    assert record["latency_skipped"]["2"] == "batch 2 x 0.1 GMACs > --max-gmacs 0.2"


def test_models_are_timed_in_turns_and_one_that_fails_is_left_out(zoo):
    calls = []

    class Step(torch.nn.Module):
        def __init__(self, label, fail=False):
            super().__init__()
            self.label, self.fail = label, fail

        def forward(self, x):
            calls.append(self.label)
            if self.fail:
                raise RuntimeError("no kernel")
            return x

    models = {"before": Step("before"), "fxprune": Step("fxprune"), "tp": Step("tp", fail=True)}
    errors = {}
    seconds = zoo.latencies(models, dict.fromkeys(models, torch.zeros(1)), warmup=1, repeats=2, errors=errors)
    assert calls == ["before", "fxprune", "tp"] + ["before", "fxprune"] * 2
    assert sorted(seconds) == ["before", "fxprune"] and all(s >= 0 for s in seconds.values())
    assert errors == {"tp": "RuntimeError: no kernel"}


HAVE_ORT = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))


@pytest.mark.skipif(not HAVE_ORT, reason="needs the export extra (onnx, onnxscript, onnxruntime)")
def test_onnxruntime_variant_exports_on_first_call_runs_the_model_and_is_timed_apart(zoo):
    import fxprune

    deploy = sys.modules["deploy"]  # imported by zoo.py
    args = zoo.parse(["--onnxruntime", "--batches", "2", "--repeats", "1", "--warmup", "1", "--no-tp"])
    torch.manual_seed(0)
    dense = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    pm = fxprune.prepare(dense, x)
    fxprune.prune_by_importance(pm, 0.5, importance="l1", scope="local")
    small = fxprune.finalize(pm)
    record = {"input": [1, 3, 8, 8], "macs_before": fxprune.count(dense, x).macs, "latency_ms": {},
              "latency_skipped": {}, "speedup": {}, "efficiency": {},
              "fxprune": {"macs_after": fxprune.count(small, x).macs}}
    models = {"before": dense, "fxprune": small}
    models.update(deploy.deployed(models, record, args))
    assert set(models) == {"before", "fxprune", "before+ort", "fxprune+ort"}
    assert models["fxprune+ort"].session is None  # a model never timed is never exported
    assert [sorted(group) for group in deploy.runtimes(models)] == [["before", "fxprune"],
                                                                    ["before+ort", "fxprune+ort"]]
    batch = torch.randn(2, 3, 8, 8)  # exported from one sample, run on two: the batch is dynamic
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(models["fxprune+ort"](batch)[0]), small(batch),
                                   rtol=1e-4, atol=1e-5)
    zoo.measure_latency(models, record, args)
    assert set(record["latency_ms"]["2"]) == set(models) and "latency_errors" not in record
    assert set(record["efficiency"]["2"]) == {"fxprune", "fxprune+ort"}  # each against its own dense model
    assert record["speedup"]["2"]["fxprune+ort"] == pytest.approx(
        record["latency_ms"]["2"]["before+ort"] / record["latency_ms"]["2"]["fxprune+ort"])


def test_onnxruntime_variant_needs_a_warm_up_for_its_export(zoo):
    with pytest.raises(SystemExit):
        zoo.parse(["--onnxruntime", "--warmup", "0"])


def test_a_round_to_failure_is_reported(zoo, zoo_plot, monkeypatch):
    """Regression: measure_fxprune caught round_to's exception and no record, table or summary said so."""
    import fxprune

    real = fxprune.prune_by_importance

    def failing(pm, *args, round_to=None, **kwargs):
        if round_to:
            raise fxprune.FxPruneError("cannot round these groups")
        return real(pm, *args, **kwargs)

    monkeypatch.setattr(zoo.fxprune, "prune_by_importance", failing)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    record = {"model": "tiny", "input": list(x.shape), "macs_before": fxprune.count(model, x).macs,
              "speedup": {}, "efficiency": {}, "latency_skipped": {}}
    models = zoo.measure_fxprune(model, x, 8, record)
    assert set(models) == {"fxprune"} and record["fxprune"]["ok"]
    rounded = record["fxprune"]["round_to"]
    assert rounded["ok"] is False and "cannot round these groups" in rounded["error"]
    s = zoo_plot.summary([record], 2)
    assert list(s["round_to_fails"]) == ["tiny"] and "cannot round" in s["round_to_fails"]["tiny"]
    assert "round_to fails on: tiny (FxPruneError: cannot round these groups" in zoo_plot.summary_text(s, 2)
    assert "round_to failed" in zoo_plot.table([record], 2)
