"""Grouping channels by the tensor dimensions they appear in: equal signatures, one group."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fxprune.core.prepare import group as groups

segments = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=4, unique=True).map(sorted),
                    min_size=1, max_size=30)


def labelled(segs):
    values = np.array([v for s in segs for v in s], dtype=np.int64)
    starts = np.cumsum([0] + [len(s) for s in segs[:-1]]).astype(np.int64)
    return groups._equal_segments(values, starts)


def expected(segs):
    """Per segment, the index of the first segment equal to it."""
    first: dict = {}
    return [first.setdefault(tuple(s), i) for i, s in enumerate(segs)]


@settings(max_examples=100, deadline=None)
@given(segs=segments)
def test_equal_segments_get_one_label_and_their_first_segment(segs):
    label, first = labelled(segs)
    assert [int(first[lab]) for lab in label] == expected(segs)


@settings(max_examples=50, deadline=None)
@given(segs=segments)
def test_segments_that_hash_alike_are_still_told_apart(segs):
    original = groups._hash_words
    groups._hash_words = lambda n: np.zeros(n, dtype=np.int64)  # every segment hashes to 0
    try:
        label, first = labelled(segs)
    finally:
        groups._hash_words = original
    assert [int(first[lab]) for lab in label] == expected(segs)
