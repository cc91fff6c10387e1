"""benchmarks/fuzz.py (make fuzz): a fresh seed each run, passed to hypothesis, and the examples counted."""

import sys

from helpers import benchmark_script

STATISTICS = """
tests/test_property.py::test_finalize_equals_masked_on_random_architectures:

  - during generate phase (2.55 seconds):
    - 200 passing, 1 failing, and 48 invalid test cases
  - during shrink phase (0.40 seconds):
    - 3 passing, 2 failing, and 0 invalid test cases

tests/test_property.py::test_finalize_equals_masked_on_random_token_models:

  - during generate phase (0.49 seconds):
    - 50 passing, 0 failing, and 0 invalid test cases
"""


def test_examples_are_read_from_hypothesis_statistics():
    with benchmark_script("fuzz") as fuzz:
        runs = fuzz.examples_run(STATISTICS)
    assert runs == {"test_finalize_equals_masked_on_random_architectures": {"passing": 203, "failing": 3,
                                                                             "invalid": 48},
                    "test_finalize_equals_masked_on_random_token_models": {"passing": 50, "failing": 0,
                                                                           "invalid": 0}}


def test_each_run_gets_the_seed_and_a_time_limit_for_its_size():
    with benchmark_script("fuzz") as fuzz:
        cmd, env = fuzz.command(10000, 1234)
    assert cmd[0] == sys.executable and "--hypothesis-seed=1234" in cmd and "--timeout=20000" in cmd
    assert env["HYPOTHESIS_PROFILE"] == "fuzz" and env["FXPRUNE_PROPERTY_EXAMPLES"] == "10000"
