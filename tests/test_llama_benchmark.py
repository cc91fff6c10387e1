"""benchmarks/llama.py: the record it writes, on a Llama small enough for the suite."""

import json

import pytest
from helpers import benchmark_script


def test_llama_benchmark_records_times_memory_and_the_pruned_shapes(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    with benchmark_script("llama") as llama:
        monkeypatch.setattr(llama, "SHAPES", {**llama.SHAPES, "hidden_size": 64, "intermediate_size": 128,
                                              "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 300})
        assert llama.main(["--layers", "2", "--length", "8", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "llama.json").read_text())
    assert record["capture"] == "export" and record["equivalence_error"] < 1e-4
    assert record["layers"] == 2 and record["command"].startswith("python benchmarks/llama.py --layers 2")
    q, k, v = record["layer0_q_k_v_out"]
    assert k == v == 8 and q == 4 * k  # one of two key/value heads of 8 went, with its four query heads
    assert 0 < record["finalized_over_model"] < 1 and record["peak_rss_bytes"] > record["model_bytes"]
    assert set(record["met"]) == {"time", "memory"} and record["machine"]["cores"] >= 1
