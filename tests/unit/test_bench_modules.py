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


def test_a_run_on_a_busy_machine_is_refused():
    """Two ways a machine shows it is busy: a yardstick far under what it gives when quiet (the
    host's other tenants hold the cores, steadily, so start and end agree), and a yardstick
    that moved during the run."""
    from bench.stack import YARDSTICK_FLOOR, Refused, check_quiet

    quiet = {"rps": YARDSTICK_FLOOR * 1.6}
    assert check_quiet(quiet) == 0.0
    assert check_quiet(quiet, {"rps": YARDSTICK_FLOOR * 1.5}) == pytest.approx(1 / 16)
    with pytest.raises(Refused, match="under the"):
        check_quiet({"rps": YARDSTICK_FLOOR * 0.5})
    with pytest.raises(Refused, match="under the"):
        check_quiet(quiet, {"rps": YARDSTICK_FLOOR * 0.9})
    with pytest.raises(Refused, match="moved 38%"):
        check_quiet(quiet, {"rps": YARDSTICK_FLOOR})
