"""Test helpers: the library's own testing tools."""

from fxprune.testing import assert_finalized_equals_masked, outputs, randomize, zero_channels  # noqa: F401
