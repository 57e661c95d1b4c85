"""Golden vectors: a registered encoder version gives the same vector for the same record forever.

tests/golden/ holds a fitted state, forty records of every kind the encoders meet, and their joint and
branch vectors (float32, little-endian). A code change that moves one bit of them must bump
FORMAT_VERSION, after which old states are refused; only then may tests/golden/regenerate.py rewrite them.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from metaspace.encoders import MetaSpace, SchemaDriftWarning, branch
from metaspace.encoders.branch import FORMAT_VERSION, BranchEncoder, EncoderFormatError

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import regenerate  # noqa: E402


@pytest.fixture(scope="module")
def state() -> dict:
    return json.loads(regenerate.STATE.read_text())


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return json.loads(regenerate.RECORDS.read_text())


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(regenerate.VECTORS.read_text())


@pytest.fixture(scope="module")
def space(state: dict) -> MetaSpace:
    return MetaSpace.from_dict(state)


def _encode(space: MetaSpace, runs: list[dict]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SchemaDriftWarning)
        return space.encode(runs)


def _differences(space: MetaSpace, records: list[dict], expected: dict) -> list[str]:
    """What differs from the golden files: spaces whose vectors are not bit-for-bit equal, and errors."""
    encoded = _encode(space, records)
    found = []
    errors = {records[i]["run_id"]: error.field for i, error in encoded.errors.items()}
    if errors != expected["errors"]:
        found.append(f"errors {errors} != {expected['errors']}")
    for name, vectors in encoded.vectors().items():
        golden = regenerate.decode_array(expected["vectors"][name])
        if vectors.dtype != np.float32 or not np.array_equal(vectors, golden):
            rows = sorted({records[i]["run_id"] for i in np.flatnonzero((vectors != golden).any(axis=1))})
            found.append(f"{name} vectors of {len(rows)} record(s) moved: {rows[:5]}")
    return found


def test_the_golden_records_encode_to_the_golden_vectors_bit_for_bit(space, records, expected) -> None:
    assert len(records) == 40
    assert _differences(space, records, expected) == []


def test_the_golden_state_keeps_its_fingerprint(space: MetaSpace, state: dict, expected: dict) -> None:
    assert space.fingerprint_ == state["fingerprint"] == expected["fingerprint"]
    assert space.to_dict() == state


def test_the_golden_files_are_of_the_current_format_version(state: dict, expected: dict) -> None:
    assert state["format_version"] == expected["format_version"] == FORMAT_VERSION, (
        "FORMAT_VERSION changed: regenerate the golden files (python tests/golden/regenerate.py) in the same commit"
    )


def test_encoding_does_not_depend_on_the_batch(space: MetaSpace, records: list[dict]) -> None:
    batch = _encode(space, records).vectors()
    again = _encode(space, records).vectors()
    order = list(range(len(records)))
    random.Random(7).shuffle(order)
    shuffled = _encode(space, [records[i] for i in order]).vectors()
    one_by_one = [_encode(space, [record]).vectors() for record in records]
    for name, vectors in batch.items():
        assert np.array_equal(again[name], vectors)
        assert np.array_equal(shuffled[name], vectors[order])
        assert np.array_equal(np.vstack([single[name] for single in one_by_one]), vectors)


def test_a_one_ulp_change_of_a_transform_fails_the_golden_comparison(space, records, expected, monkeypatch) -> None:
    apply = branch._apply
    monkeypatch.setattr(branch, "_apply", lambda transform, x, shift: apply(transform, x, shift) + 1e-7)
    differences = _differences(space, records, expected)
    assert any(d.startswith("joint vectors") for d in differences), differences


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, FORMAT_VERSION - 1, None])
def test_a_state_of_another_format_version_is_refused(state: dict, version: int | None) -> None:
    changed = copy.deepcopy(state)
    changed["format_version"] = version
    with pytest.raises(EncoderFormatError) as caught:
        MetaSpace.from_dict(changed)
    message = str(caught.value)
    assert f"format {version}" in message and f"format {FORMAT_VERSION}" in message
    assert "metaspace embed-runs --rebuild" in message
    branch_state = copy.deepcopy(state["branches"]["env"])
    branch_state["format_version"] = version
    with pytest.raises(EncoderFormatError, match="embed-runs --rebuild"):
        BranchEncoder.from_dict(branch_state)
