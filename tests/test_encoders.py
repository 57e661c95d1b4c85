"""The encoders: properties (hypothesis) and behaviour on real-looking nested records."""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaspace.encoders import BranchEncoder, EncodingError, MetaSpace, SchemaDriftWarning, typical_distance
from metaspace.encoders.features import flatten


def _run(rng: random.Random, i: int) -> dict:
    bull = rng.random()
    bear = rng.random() * (1 - bull)
    family = rng.choice(["trend", "meanrev"])
    config = {"family": family, "risk": {"target_vol": rng.uniform(0.05, 0.2), "max_leverage": rng.uniform(1, 3)},
              "rebalance": rng.choice(["daily", "weekly", "monthly"]), "use_stop": rng.random() < 0.5}
    if family == "trend":
        config["trend"] = {"fast": rng.choice([5, 10, 20]), "slow": rng.choice([50, 100, 200])}
    else:
        config["meanrev"] = {"zscore_entry": rng.uniform(1, 3)}
    return {
        "run_id": f"R{i}", "as_of_date": "2024-01-01", "config": config,
        "env": {"regime_mix": {"bull": bull, "bear": bear, "sideways": 1 - bull - bear},
                "realized_vol": rng.lognormvariate(-1.8, 0.4), "universe": {"n_assets": rng.choice([50, 480, 3000])},
                "term_structure": [rng.gauss(0, 1) for _ in range(4)]},
        "outcome": {"sharpe": rng.gauss(0.5, 0.7), "max_drawdown": -abs(rng.gauss(0.15, 0.05)),
                    "turnover": rng.lognormvariate(1, 1), "hit_rate": rng.uniform(0.4, 0.6)},
    }


@pytest.fixture(scope="module")
def history() -> list[dict]:
    rng = random.Random(11)
    return [_run(rng, i) for i in range(600)]


@pytest.fixture(scope="module")
def space(history: list[dict]) -> MetaSpace:
    return MetaSpace().fit(history)


def _pairwise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)


# -- generated records (issue 10): the fitted keys and some unseen ones, values of every kind and magnitude --

FITTED_KEYS = {
    "config": ["family", "meanrev.zscore_entry", "rebalance", "risk.max_leverage", "risk.target_vol", "trend.fast",
               "trend.slow", "use_stop"],
    "env": ["realized_vol", "regime_mix.bear", "regime_mix.bull", "regime_mix.sideways", "term_structure",
            "universe.n_assets"],
    "outcome": ["hit_rate", "max_drawdown", "sharpe", "turnover"],
}
UNSEEN_KEYS = ["brand_new", "risk.brand_new", "universe.n_assets.deeper", "a.b.c"]

numbers = st.one_of(
    st.integers(-1000, 1000), st.integers(-(10**400), 10**400), st.floats(-10.0, 10.0), st.floats(0.0, 1.0),
    st.floats(allow_nan=True, allow_infinity=True),  # NaN and ±inf reach the encoder from Python callers
    st.sampled_from([0, 0.0, -0.0, 5e-324, 1e308, -1e308, 1.7976931348623157e308, 2**1024, -(2**1024)]),
)
strings = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-Infinity", "1e400", "", "daily", "weekly", "trend", "meanrev"]),
    st.text(max_size=12), st.builds(lambda c, n: c * n, st.characters(), st.integers(1_000, 50_000)),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
leaves = st.one_of(
    scalars,
    st.lists(numbers, max_size=40),  # lists of numbers of any length, and lists that are not of numbers
    st.lists(scalars, max_size=6),
    st.recursive(scalars, lambda inner: st.dictionaries(st.sampled_from(["x", "fast", "bull", "y.z"]), inner,
                                                         max_size=3), max_leaves=6),
)


def _nest(flat: dict) -> dict:
    """Dotted keys back into nested objects (a key whose parent is already a leaf is dropped)."""
    out: dict = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(leaf, value)
    return out


def _branch_records(branch: str):
    keys = FITTED_KEYS[branch] + UNSEEN_KEYS
    return st.one_of(st.none(), st.dictionaries(st.sampled_from(keys), leaves, max_size=len(keys)).map(_nest))


foreign_runs = st.lists(
    st.fixed_dictionaries({b: _branch_records(b) for b in FITTED_KEYS}), min_size=1, max_size=6,
).map(lambda runs: [{"run_id": f"H{i}", **run} for i, run in enumerate(runs)])


def _fits_float64(value) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _expected_errors(space: MetaSpace, run: dict) -> tuple[set[str], set[str]]:
    """What docs/encoders.md says of a run: the fields that cannot be encoded (a string or an object where a
    number or true/false is expected, a non-number in a list, an integer beyond float64), and the fields
    that may or may not be (a number in a true/false field: unclipped, an error only past float32)."""
    bad, unbounded = set(), set()
    for branch, encoder in space.branches_.items():
        flat = flatten(run.get(branch))
        for spec in encoder.features_:
            if spec["kind"] == "category":
                continue
            value, index = flat.get(spec["key"]), spec.get("index")
            if index is not None:
                value = (value[index] if index < len(value) else None) if isinstance(value, list) else (
                    value if index == 0 else None)
            field = f"{branch}.{spec.get('name', spec['key'])}"
            if value is None or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
                continue
            if not isinstance(value, (int, float)) or not _fits_float64(value):
                bad.add(field)
            elif spec["kind"] == "boolean" and not 0 <= value <= 1:
                unbounded.add(field)
    return bad, unbounded


def _norm_bound(encoder: BranchEncoder) -> float:
    """The largest norm a branch vector can have when true/false fields hold true/false (or 0..1)."""
    total = 0.0
    for spec in encoder.features_:
        w = spec["weight"] ** 2
        if spec["kind"] == "category":
            total += w / 2
        else:
            total += (encoder.clip**2 if spec["kind"] == "numeric" else 1.0) * w + (w if spec["flag"] else 0.0)
    return math.sqrt(total)


def test_the_generated_records_use_the_fitted_keys(space: MetaSpace) -> None:
    assert {b: enc.feature_keys() for b, enc in space.branches_.items()} == FITTED_KEYS


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow, HealthCheck.data_too_large])
@given(runs=foreign_runs)
def test_transform_encodes_good_records_and_names_the_run_and_field_of_bad_ones(space: MetaSpace, runs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SchemaDriftWarning)
        encoded = space.encode(runs)
        again = space.encode(runs)
        reversed_ = space.encode(runs[::-1])
        single = [space.encode([run]) for run in runs]
        branch_alone = {b: space.branches_[b].transform_with_errors([run.get(b) for run in runs],
                                                                   [run["run_id"] for run in runs])
                        for b in space.branches_}
    n = len(runs)
    for name, vectors in encoded.vectors().items():
        assert vectors.shape == (n, 384) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
        assert np.array_equal(again.vectors()[name], vectors)
        assert np.array_equal(reversed_.vectors()[name][::-1], vectors)
        assert np.array_equal(np.vstack([one.vectors()[name] for one in single]), vectors)
    assert {i: e.field for i, e in encoded.errors.items()} == {
        i: one.errors[0].field for i, one in enumerate(single) if one.errors}

    for i, run in enumerate(runs):
        bad, unbounded = _expected_errors(space, run)
        error = encoded.errors.get(i)
        if bad:
            assert isinstance(error, EncodingError), (run, bad)
        if error is not None:
            assert error.record == run["run_id"] and error.field in bad | unbounded, (error, bad, unbounded)
            assert not any(v[i].any() for v in encoded.vectors().values())
            continue
        for b, encoder in space.branches_.items():
            z = encoded.branches[b][i]
            assert np.array_equal(branch_alone[b][0][i], z)
            if not unbounded:
                assert np.linalg.norm(z.astype(np.float64)) <= _norm_bound(encoder) * (1 + 1e-5)
        if not unbounded:
            joint_bound = math.sqrt(sum((space.scales_[b] * _norm_bound(e)) ** 2 for b, e in space.branches_.items()))
            assert np.linalg.norm(encoded.joint[i].astype(np.float64)) <= joint_bound * (1 + 1e-5)

    good = [i for i in range(n) if i not in encoded.errors]
    if len(good) >= 2:
        _assert_joint_distance_decomposes(space, encoded, good)


def _assert_joint_distance_decomposes(space: MetaSpace, encoded, rows: list[int]) -> None:
    """docs/encoders.md, section 4: d_joint² = Σ_b (w_b / t_b)² d_b², exactly up to float32 rounding."""
    for b, encoder in space.branches_.items():
        assert space.scales_[b] == space.weights_[b] / encoder.typical_distance_
    joint = _pairwise(encoded.joint[rows]) ** 2
    combined = sum(space.scales_[b] ** 2 * _pairwise(encoded.branches[b][rows]) ** 2 for b in encoded.branches)
    scale = max(float(np.abs(encoded.joint[rows].astype(np.float64)).max()), 1e-3) ** 2
    assert np.allclose(joint, combined, rtol=1e-4, atol=1e-5 * scale)


@settings(max_examples=40, deadline=None)
@given(
    records=st.lists(
        st.fixed_dictionaries({"a": st.floats(-1e6, 1e6), "b": st.sampled_from(["x", "y", "z"]),
                               "c": st.one_of(st.none(), st.floats(0, 1)), "d": st.booleans()}),
        min_size=3, max_size=30,
    )
)
def test_branch_map_is_an_isometry_of_the_transformed_features(records: list[dict]) -> None:
    encoder = BranchEncoder("config", min_category_count=1).fit(records)
    features = encoder._features([dict(r) for r in records], None, None)
    z = encoder.transform(records)
    d_features, d_vectors = _pairwise(features), _pairwise(z)
    scale = max(d_features.max(), 1e-6)
    assert np.allclose(d_vectors, d_features, rtol=1e-5, atol=1e-5 * scale)


def _reverse_keys(value):
    if isinstance(value, dict):
        return {key: _reverse_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(item) for item in value]
    return value


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_encoding_is_deterministic_and_survives_a_state_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    runs = [_run(rng, i) for i in range(40)]
    first = MetaSpace(seed=3).fit(runs)
    second = MetaSpace(seed=3).fit(runs)
    assert first.fingerprint_ == second.fingerprint_
    reloaded = MetaSpace.from_dict(json.loads(json.dumps(first.to_dict())))
    assert reloaded.fingerprint_ == first.fingerprint_
    assert np.array_equal(reloaded.transform(runs), first.transform(runs))
    # PostgreSQL's jsonb gives keys back in its own order: the state must not depend on key order.
    reordered = MetaSpace.from_dict(_reverse_keys(first.to_dict()))
    assert np.array_equal(reordered.transform(runs), first.transform(runs))
    assert np.array_equal(first.transform(runs), second.transform(runs))


def test_a_changed_state_is_refused(space: MetaSpace) -> None:
    state = space.to_dict()
    state["scales"]["env"] *= 2
    with pytest.raises(ValueError, match="fingerprint"):
        MetaSpace.from_dict(state)


def test_joint_distance_is_the_weighted_combination_of_branch_distances(space: MetaSpace, history) -> None:
    encoded = space.encode(history[:50])
    expected_sq = sum(space.scales_[b] ** 2 * _pairwise(encoded.branches[b]) ** 2 for b in encoded.branches)
    assert np.allclose(_pairwise(encoded.joint) ** 2, expected_sq, rtol=1e-4, atol=1e-5)
    assert np.allclose(space.combine(*encoded.branches.values()), encoded.joint, atol=1e-5)


def test_each_branch_contributes_equally_on_the_fitted_history(space: MetaSpace, history) -> None:
    encoded = space.encode(history)
    contributions = [typical_distance(encoded.branches[b]) * space.scales_[b] for b in encoded.branches]
    assert np.allclose(contributions, 1.0, rtol=1e-3)


def test_a_wide_one_hot_config_does_not_swamp_a_five_number_outcome() -> None:
    rng = random.Random(5)
    runs = [{"config": {"universe": f"U{rng.randrange(200)}"},
             "env": {"vol": rng.random()},
             "outcome": {k: rng.gauss(0, 1) for k in "abcde"}} for _ in range(4000)]
    space = MetaSpace(min_category_count=1).fit(runs)
    assert len(space.branches_["config"].get_feature_names_out()) >= 200
    encoded = space.encode(runs)
    config_part = typical_distance(encoded.branches["config"]) * space.scales_["config"]
    outcome_part = typical_distance(encoded.branches["outcome"]) * space.scales_["outcome"]
    assert math.isclose(config_part, outcome_part, rel_tol=1e-3)


def test_environments_with_similar_regime_mix_and_vol_are_closer(space: MetaSpace) -> None:
    base = {"universe": {"n_assets": 480}, "term_structure": [0, 0, 0, 0]}
    calm_a = base | {"regime_mix": {"bull": 0.70, "bear": 0.05, "sideways": 0.25}, "realized_vol": 0.12}
    calm_b = base | {"regime_mix": {"bull": 0.65, "bear": 0.08, "sideways": 0.27}, "realized_vol": 0.13}
    stressed = base | {"regime_mix": {"bull": 0.10, "bear": 0.75, "sideways": 0.15}, "realized_vol": 0.45}
    z = space.branches_["env"].transform([calm_a, calm_b, stressed])
    assert np.linalg.norm(z[0] - z[1]) < 0.5 * np.linalg.norm(z[0] - z[2])


def test_regime_mix_is_recognised_as_a_distribution(space: MetaSpace) -> None:
    transforms = {s["name"]: s["transform"] for s in space.branches_["env"].features_ if s["kind"] == "numeric"}
    assert {transforms[f"regime_mix.{k}"] for k in ("bull", "bear", "sideways")} == {"sqrt"}
    assert transforms["universe.n_assets"] == "log"


def test_an_absurd_value_is_clipped_not_thrown_across_the_space(space: MetaSpace, history) -> None:
    normal = history[0]
    absurd = json.loads(json.dumps(normal))
    absurd["outcome"]["sharpe"] = 1e12
    z = space.transform([normal, absurd])
    assert np.linalg.norm(z[0] - z[1]) < 3.0


def test_a_string_where_a_number_is_expected_names_the_run_and_key(space: MetaSpace, history) -> None:
    bad = json.loads(json.dumps(history[3]))
    bad["env"]["realized_vol"] = "high"
    with pytest.raises(EncodingError) as caught:
        space.transform([history[0], bad])
    assert caught.value.record == bad["run_id"] and caught.value.field == "env.realized_vol"
    encoded = space.encode([history[0], bad])
    assert list(encoded.errors) == [1] and encoded.ok.tolist() == [True, False]


def test_a_wrong_type_in_a_list_is_an_error(space: MetaSpace, history) -> None:
    bad = json.loads(json.dumps(history[4]))
    bad["env"]["term_structure"][2] = "x"
    with pytest.raises(EncodingError, match=r"env.term_structure\[2\]"):
        space.transform([bad])


def test_missing_extra_and_unseen_values_are_absorbed(space: MetaSpace, history) -> None:
    run = json.loads(json.dumps(history[5]))
    del run["env"]["realized_vol"]
    run["config"]["rebalance"] = "hourly"
    run["config"]["brand_new_knob"] = 3
    with pytest.warns(SchemaDriftWarning, match="brand_new_knob"):
        z = space.transform([run])
    assert np.isfinite(z).all()
    assert space.branches_["config"].last_unknown_keys_ == {"brand_new_knob": 1}


def test_missing_is_information_not_a_crash() -> None:
    records = [{"a": 1.0, "b": None if i % 3 == 0 else float(i)} for i in range(30)]
    encoder = BranchEncoder("env").fit(records)
    assert "b__missing" in encoder.get_feature_names_out()


def test_overrides_ignore_pin_and_weight(history) -> None:
    overrides = {"realized_vol": {"transform": "log", "weight": 3.0}, "universe.n_assets": {"ignore": True}}
    encoder = BranchEncoder("env", overrides=overrides).fit([r["env"] for r in history])
    specs = {s.get("name", s["key"]): s for s in encoder.features_}
    assert specs["realized_vol"]["transform"] == "log" and specs["realized_vol"]["weight"] == 3.0
    assert "universe.n_assets" not in encoder.get_feature_names_out()


def test_more_than_384_features_keeps_the_top_directions_and_reports_variance() -> None:
    rng = np.random.default_rng(2)
    latent = rng.standard_normal((900, 20))
    records = [{f"f{j}": float(v) for j, v in enumerate(row)} for row in latent @ rng.standard_normal((20, 450))]
    encoder = BranchEncoder("config").fit(records)
    assert len(encoder.get_feature_names_out()) == 450
    assert encoder.components_.shape == (384, 450)
    assert encoder.explained_variance_ratio_ > 0.99
    assert encoder.transform(records[:3]).shape == (3, 384)


def test_transform_before_fit_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        BranchEncoder("config").transform([{}])
