"""benchmarks/narrow.py: torchvision's narrow models and fxprune's pruned wide ones, timed against the wide."""

import math

import pytest
import torch
from helpers import benchmark_script

import fxprune


@pytest.fixture(scope="module")
def narrow():
    with benchmark_script("narrow") as module:
        yield module


@pytest.mark.parametrize("name", ["mobilenet_v2", "mnasnet1_0", "shufflenet_v2_x2_0", "efficientnet_b0",
                                  "mobilenet_v3_large", "wide_resnet50_2"])
def test_every_narrow_model_builds_and_has_fewer_macs_than_its_wide_one(narrow, name):
    build_wide, build_narrow, _ = narrow.PAIRS[name]
    x = torch.randn(1, 3, 32, 32)
    wide, small = fxprune.count(build_wide(), x), fxprune.count(build_narrow(), x)
    assert 0.2 * wide.macs < small.macs < 0.5 * wide.macs and small.params < wide.params


def test_a_pair_is_timed_in_every_variant_with_efficiency_against_the_wide_model(narrow):
    args = narrow.parse(["mobilenet_v2", "--batch", "2", "--size", "64", "--repeats", "1", "--warmup", "0",
                         "--channels-last"])
    record = narrow.measure_pair("mobilenet_v2", args)
    small = {"narrow", "fxprune", "fxprune_round8"}
    assert set(record["latency_ms"]) == {label + suffix for label in small | {"before"} for suffix in ("", "+nhwc")}
    assert set(record["efficiency"]) == {label + suffix for label in small for suffix in ("", "+nhwc")}
    macs = record["macs"]
    assert all(0 < macs[label] < macs["before"] for label in small) and macs["fxprune_round8"] != macs["fxprune"]
    for label, efficiency in record["efficiency"].items():
        ms = record["latency_ms"]
        base = "before+nhwc" if label.endswith("+nhwc") else "before"
        assert math.isclose(record["speedup"][label], ms[base] / ms[label])
        assert math.isclose(efficiency, record["speedup"][label] * macs[label.removesuffix("+nhwc")] / macs["before"])
    text = narrow.table([record], 8)
    assert text.count("mobilenet_v2") == 2 and "in channels_last" in text and "fxprune_round8 efficiency" in text
    medians = narrow.medians([record], 8)
    assert set(medians) == {"PyTorch", "in channels_last"}
    assert medians["PyTorch"] == {label: record["efficiency"][label] for label in small}
    assert "the same with round_to=8" in narrow.medians_text(medians, 8)


def test_a_model_without_a_narrow_version_is_refused_with_the_pairs(narrow, capsys):
    with pytest.raises(SystemExit):
        narrow.parse(["resnet18"])
    assert "no narrow version of resnet18" in capsys.readouterr().err
