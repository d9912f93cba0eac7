"""A short, deterministic fuzz run of every target in fuzz/fuzz_targets.py (issue 6).

The targets feed arbitrary bytes to ``ports_to_ssl_ports`` (both modes, over an in-memory
transport that returns the bytes then EOF), to the PEM/DER loaders and to
``hex_string_to_bytes``; each must end with the documented exception, never crash or hang
(every case runs in a worker thread joined with a time limit). Hypothesis is derandomized here
so the run is the same every time and takes a few seconds; ``make fuzz`` runs the same targets
for minutes, coverage-guided with atheris when it is installed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))

import fuzz_targets as targets

EXAMPLES = {
    "stream_accept": 120,
    "stream_connect": 120,
    "private_key": 150,
    "certificate_chain": 150,
    "verify_source": 100,
    "dhe": 150,
    "hex": 150,
}
CASE_LIMIT = 10.0


@pytest.fixture(scope="module", autouse=True)
def _scratch() -> Iterator[None]:
    yield
    targets.cleanup()


def test_every_target_has_a_budget() -> None:
    assert set(EXAMPLES) == set(targets.TARGETS)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seeds(name: str) -> None:
    """The starting corpus itself (real handshakes, real keys and certificates)."""
    for seed in targets.seeds(name):
        targets.run_bounded(targets.TARGETS[name], seed, CASE_LIMIT)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_fuzz_derandomized(name: str) -> None:
    fn = targets.TARGETS[name]

    @settings(
        max_examples=EXAMPLES[name],
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(targets.strategy(name, max_size=2048))
    def case(data: bytes) -> None:
        targets.run_bounded(fn, data, CASE_LIMIT)

    case()


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\xff" * 3,
        b"\x04\x16\x03\x03" + b"\xff\xff" + b"\x01" * 70000,
        b"-----BEGIN " * 1000,
        b"-----BEGIN CERTIFICATE-----\n" + b"A" * 100000 + b"\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PRIVATE KEY-----\n" + b"\x00" * 50 + b"\n-----END PRIVATE KEY-----\n",
        b"\x30\x82\xff\xff" + b"\x02\x01\x00" * 100,  # a DER SEQUENCE claiming 64 KiB
        b"\x30\x84\xff\xff\xff\xff",  # ... claiming 4 GiB
    ],
    ids=[
        "empty",
        "nul",
        "ff",
        "big-record",
        "begin-spam",
        "huge-pem",
        "nul-key",
        "der-64k",
        "der-4g",
    ],
)
def test_edge_inputs(name: str, data: bytes) -> None:
    targets.run_bounded(targets.TARGETS[name], data, CASE_LIMIT)


def test_stream_input_of_one_mebibyte() -> None:
    """A long, well-framed but meaningless stream of records ends with an error, promptly."""
    record = b"\x16\x03\x03\x40\x00" + bytes(0x4000)
    data = b"\x04" + record * 64
    for fn in (targets.stream_accept, targets.stream_connect):
        targets.run_bounded(fn, data, CASE_LIMIT)
