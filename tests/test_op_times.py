"""benchmarks/op_times.py: the per-kind times add up and the table says what it measured."""

import pytest
from helpers import benchmark_script


@pytest.fixture(scope="module")
def op_times():
    with benchmark_script("op_times") as module:  # imports zoo as a sibling
        yield module


@pytest.mark.parametrize("channels_last", [False, True])
def test_breakdown_of_a_pruned_resnet18(op_times, channels_last):
    result = op_times.breakdown("resnet18", batch=2, repeats=1, size=32, channels_last=channels_last)
    assert result["macs_ratio"] > 2  # ratio 0.5 halves inputs and outputs of most convolutions
    for times in (result["before_s"], result["after_s"]):
        assert times["convolution"] > 0 and times["batch norm"] > 0 and all(t >= 0 for t in times.values())
        assert set(times) <= set(op_times.KINDS) | {"other"}
    text = op_times.table(result)
    layout = "channels_last" if channels_last else "contiguous"
    assert text.startswith(f"resnet18, batch 2, {layout}: MACs") and "| convolution" in text and "| all" in text
