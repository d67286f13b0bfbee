"""The bench's entry points import against the current code: `make bench` and
`make bench-campaign` run outside the test suite, so a helper that moved (the API-key helpers
left shvya_ingest.auth for shvya_common.apikeys) would otherwise break them unnoticed."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "module", ["bench.run", "bench.campaign", "bench.rows", "bench.preload", "bench.roundtrips"]
)
def test_the_bench_module_imports(module):
    assert importlib.import_module(module)
