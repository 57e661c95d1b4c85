"""The encoders inside PostgreSQL (historical_db.encode_v1) give the Python encoders' vectors, and refuse
what they refuse with the same field."""

from __future__ import annotations

import copy
import json
import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from metaspace.encoders import MetaSpace
from metaspace.encoders.features import fingerprint
from metaspace.errors import MetaspaceError
from metaspace.queries import _Encoder, queries_from
from metaspace.sample import sample_runs
from metaspace.store import registry
from metaspace.store.connection import connect

GOLDEN = Path(__file__).parent / "golden"
SPACES = ("joint", "config", "env", "outcome")
FIELD = re.compile(r"field '(.*)': ")


def _wide_history(n: int = 2000) -> list[dict]:
    """Runs whose config has a 400-category tag: more than 384 features, so the branch and the joint
    model reduce by PCA (the path the sample history never takes)."""
    runs = sample_runs(n, seed=5)
    for i, run in enumerate(runs):
        run["config"] = dict(run["config"], tag=f"T{i % 400}")
    return runs


@pytest.fixture(scope="module")
def states() -> dict[str, dict]:
    """Three fitted states: the golden one (registered before imputations were kept), one fitted on the
    sample history with a weight override (it keeps imputations), and a wide one (PCA)."""
    golden = json.loads((GOLDEN / "state.json").read_text())
    sample = MetaSpace(overrides={"env": {"realized_vol": {"weight": 2.0}}}).fit(sample_runs(300, seed=4))
    wide = MetaSpace().fit(_wide_history())
    return {"golden": golden, "sample": sample.to_dict(), "wide": wide.to_dict()}


@pytest.fixture(scope="module")
def encoders_db(server_url: str, template_url: str, states: dict[str, dict]) -> Iterator[tuple[str, dict]]:
    """A database with the three states registered (the last active); yields its URL and name -> version."""
    from conftest import TEMPLATE, _create_database, _drop_database

    name = f"e_{uuid.uuid4().hex[:12]}"
    url = _create_database(server_url, name, template=TEMPLATE)
    with connect(url, autocommit=True) as conn:
        versions = {key: registry.register(conn, state, state["fingerprint"], 10, activate=False)
                    for key, state in states.items()}
        registry.activate(conn, versions["wide"])
    yield url, versions
    _drop_database(server_url, name)


def _python(space: MetaSpace, kind_space: str, record: dict) -> tuple[np.ndarray | None, str | None]:
    """The vector `metaspace search` would search with, or the field it refuses."""
    encoder = _Encoder.__new__(_Encoder)
    encoder.space, encoder.version, encoder.fitted_through = space, 0, None
    try:
        [query] = queries_from("record" if kind_space == "joint" else kind_space, [("q", record)], space=kind_space)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vector, _ = encoder.vector(query)
        return vector, None
    except MetaspaceError as exc:
        match = FIELD.search(str(exc))
        return None, match.group(1) if match else "(refused without a field)"


def _sql(conn: psycopg.Connection, space: str, record: dict, version: int) -> tuple[np.ndarray | None, str | None]:
    try:
        with conn.transaction():
            vector = conn.execute("SELECT historical_db.encode_v1(%s, %s, %s)", (space, Jsonb(record), version)
                                  ).fetchone()[0]
        return vector.to_numpy(), None
    except psycopg.errors.InvalidParameterValue as exc:
        match = FIELD.search(exc.diag.message_primary)
        return None, match.group(1) if match else "(refused without a field)"


def _assert_agree(conn, space: MetaSpace, version: int, record: dict) -> None:
    for name in SPACES:
        expected, refused = _python(space, name, record)
        got, sql_refused = _sql(conn, name, record, version)
        assert sql_refused == refused, (name, record)
        if expected is not None:
            scale = max(float(np.linalg.norm(expected)), 1e-30)
            assert float(np.abs(got - expected).max()) <= 1e-6 * scale, (name, record)


@pytest.fixture(scope="module")
def spaces(states: dict[str, dict]) -> dict[str, MetaSpace]:
    return {key: MetaSpace.from_dict(state) for key, state in states.items()}


def test_the_golden_records_encode_in_sql_as_in_python(encoders_db, spaces) -> None:
    url, versions = encoders_db
    records = [r for r in json.loads((GOLDEN / "records.json").read_text()) if r["run_id"] != "GOLDEN_nan_and_inf"]
    with connect(url, autocommit=True) as conn:
        for key in versions:
            for record in records:
                _assert_agree(conn, spaces[key], versions[key], record)


def test_a_state_without_imputations_and_one_with_them_both_impute_like_python(encoders_db, spaces, states) -> None:
    url, versions = encoders_db
    assert "imputation" not in states["golden"] and "imputation" in states["sample"]
    record = {"env": sample_runs(1, seed=9)[0]["env"]}
    with connect(url, autocommit=True) as conn:
        for key in ("golden", "sample"):
            _assert_agree(conn, spaces[key], versions[key], record)


def test_the_wide_version_reduces_by_pca_in_sql_too(encoders_db, spaces, states) -> None:
    url, versions = encoders_db
    assert spaces["wide"].branches_["config"].components_.shape[1] > 384
    with connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM historical_db.encoder_matrices WHERE version = %s "
                            "AND matrix = 'config.pca'", (versions["wide"],)).fetchone()[0] == 384
        for run in _wide_history(30)[::7]:
            _assert_agree(conn, spaces["wide"], versions["wide"], run)


# -- the property: any record, every space, three versions -------------------------------------------------

NAMES = st.sampled_from(["lookback_days", "risk", "target_vol", "rebalance", "use_stop", "universe_tag",
                         "realized_vol", "regime_mix", "calm", "stressed", "term_structure", "universe", "n_assets",
                         "market", "sharpe", "calmar", "hit_rate", "turnover", "tag", "brand_new", "x.y"])
NUMBERS = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 5e-324, 1e-310, 1e308, -1.7976931348623157e308, 10**400, -(10**309), 2**1023]),
)
LABELS = st.sampled_from(["daily", "weekly", "trend", "NDX", "2000", "500", "US_EQ", "T7", "nan", "NaN", "inf",
                          "-Infinity", "1e400", "", "it's", 'say "hi"', "ünïcode"])
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, LABELS, st.lists(NUMBERS, max_size=20),
                   st.lists(st.one_of(NUMBERS, LABELS, st.none(), st.booleans()), max_size=4))
BRANCH = st.recursive(LEAVES, lambda inner: st.dictionaries(NAMES, inner, max_size=5), max_leaves=25)


def _deep(depth: int) -> dict:
    node: dict = {"n_assets": 3}
    for _ in range(depth):
        node = {"universe": node}
    return node


RECORDS = st.fixed_dictionaries({}, optional={
    "run_id": st.just("R1"), "as_of_date": st.just("2024-01-02"),
    "config": st.one_of(st.dictionaries(NAMES, BRANCH, max_size=8), LEAVES),
    "env": st.one_of(st.dictionaries(NAMES, BRANCH, max_size=8), st.integers(95, 110).map(_deep)),
    "outcome": st.dictionaries(NAMES, BRANCH, max_size=8),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(record=RECORDS, which=st.sampled_from(["golden", "sample", "wide"]))
def test_sql_and_python_give_the_same_vector_or_refuse_the_same_field(encoders_db, spaces, record, which) -> None:
    url, versions = encoders_db
    with connect(url, autocommit=True) as conn:
        _assert_agree(conn, spaces[which], versions[which], record)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env=st.dictionaries(st.sampled_from(["realized_vol", "drawdown", "vol_of_vol", "autocorr_1d"]),
                           st.one_of(NUMBERS, LABELS, st.none(), st.booleans()), min_size=1))
def test_bare_env_objects_agree_whatever_their_values(encoders_db, spaces, env) -> None:
    url, versions = encoders_db
    with connect(url, autocommit=True) as conn:
        for key in ("golden", "sample"):
            _assert_agree(conn, spaces[key], versions[key], env)


# -- arguments ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (("nowhere", {"env": {"x": 1}}, None), "unknown space 'nowhere'"),
    (("env", [1, 2], None), "must be a JSON object"),
    (("env", {"realized_vol": 0.2}, 999), "encoder version 999 is not registered"),
    (("env", {}, None), "'env' object, which is missing or empty"),
    (("joint", {"run_id": "x"}, None), "none of config, env, outcome"),
])
def test_bad_arguments_are_refused_with_a_clear_error(encoders_db, args, message) -> None:
    url, _ = encoders_db
    space, record, version = args
    with connect(url, autocommit=True) as conn, pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute("SELECT historical_db.encode_v1(%s, %s, %s)", (space, Jsonb(record), version))
    assert message in caught.value.diag.message_primary


def test_the_active_version_is_the_default(encoders_db, spaces) -> None:
    url, versions = encoders_db
    with connect(url, autocommit=True) as conn:
        env = {"realized_vol": 0.2}
        default = conn.execute("SELECT historical_db.encode_v1('env', %s)", (Jsonb(env),)).fetchone()[0]
        pinned = conn.execute("SELECT historical_db.encode_v1('env', %s, %s)", (Jsonb(env), versions["wide"])
                              ).fetchone()[0]
        assert np.array_equal(default.to_numpy(), pinned.to_numpy())


def test_the_sql_state_of_a_version_is_immutable(encoders_db) -> None:
    url, versions = encoders_db
    with connect(url, autocommit=True) as conn, pytest.raises(psycopg.errors.RaiseException, match="immutable"):
        conn.execute("UPDATE historical_db.encoder_features SET center = 0 WHERE version = %s", (versions["golden"],))


def test_a_state_sql_cannot_read_is_registered_and_refused_by_encode_v1(encoders_db, states) -> None:
    url, _ = encoders_db
    state = copy.deepcopy(states["golden"]) | {"format_version": 99}
    state["fingerprint"] = fingerprint(state)
    with connect(url, autocommit=True) as conn:
        version = registry.register(conn, state, state["fingerprint"], 10, activate=False)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="cannot be encoded in SQL"):
            conn.execute("SELECT historical_db.encode_v1('env', '{\"a\": 1}', %s)", (version,))



def test_versions_registered_before_the_sql_encoders_are_derived_by_the_migration(empty_db, states, spaces) -> None:
    from metaspace.store import migrate

    migrate.upgrade(empty_db, "0010_suggest_v2")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        for version, key in ((1, "golden"), (2, "sample")):
            state = states[key]
            conn.execute("INSERT INTO historical_db.encoder_versions (version, model_id, state, fingerprint, "
                         "fitted_on_runs, is_active) VALUES (%s, %s, %s, %s, 10, %s)",
                         (version, state["model_id"], Jsonb(state), state["fingerprint"], version == 2))
    migrate.upgrade(empty_db)
    with connect(empty_db, autocommit=True) as conn:
        for version, key in ((1, "golden"), (2, "sample")):
            for run in sample_runs(5, seed=2):
                _assert_agree(conn, spaces[key], version, run)
    migrate.downgrade(empty_db, "0010_suggest_v2")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('historical_db.encoder_matrices')").fetchone()[0] is None


def test_the_sql_encoder_implements_the_state_format_python_writes() -> None:
    from metaspace.encoders.branch import FORMAT_VERSION
    from metaspace.store.sql_encoders import SQL_ENCODER_FORMAT

    assert SQL_ENCODER_FORMAT == FORMAT_VERSION, (
        "the Python encoders write a new state format: write the SQL encoder for it (a new encode_vN.sql and its "
        "revision) before moving SQL_ENCODER_FORMAT")


@pytest.fixture(scope="module")
def transform_versions(encoders_db) -> dict[str, tuple[int, MetaSpace]]:
    """One version per transform of TRANSFORMS, each forced on realized_vol (and on a config knob)."""
    from metaspace.encoders.branch import TRANSFORMS

    url, _ = encoders_db
    history = sample_runs(300, seed=6)
    out = {}
    with connect(url, autocommit=True) as conn:
        for transform in TRANSFORMS:
            space = MetaSpace(overrides={"env": {"realized_vol": {"transform": transform}},
                                         "config": {"lookback_days": {"transform": transform}}}).fit(history)
            state = space.to_dict()
            out[transform] = (registry.register(conn, state, state["fingerprint"], 10, activate=False), space)
    return out


@pytest.mark.parametrize("value", [0.0, 1e-12, 0.004, 0.31, 1.0, 7.5, 1e6, -2.0, 1e300])
def test_every_transform_encodes_alike_in_sql_and_python(encoders_db, transform_versions, value) -> None:
    from metaspace.encoders.branch import TRANSFORMS

    url, _ = encoders_db
    assert set(transform_versions) == set(TRANSFORMS)
    run = sample_runs(1, seed=8)[0]
    record = {"config": dict(run["config"], lookback_days=value), "env": dict(run["env"], realized_vol=value),
              "outcome": run["outcome"]}
    with connect(url, autocommit=True) as conn:
        for transform, (version, space) in transform_versions.items():
            feature = next(f for f in space.branches_["env"].features_ if f["key"] == "realized_vol")
            assert feature["transform"] == transform
            _assert_agree(conn, space, version, record)


def test_the_sql_encoder_refuses_a_transform_it_does_not_know(encoders_db) -> None:
    """encoder_features_v1 ended its transforms with ELSE the value itself: one it did not know became the
    identity, silently. Now the one function of the transforms raises."""
    url, _ = encoders_db
    with connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT historical_db.encoder_transform_v1('log', 1.0, 1.0)").fetchone()[0] == 0.0
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="does not know the transform 'cube'"):
            conn.execute("SELECT historical_db.encoder_transform_v1('cube', 2.0, 1.0)")


def test_the_database_accepts_exactly_the_transforms_python_has(encoders_db) -> None:
    """A transform added to the Python encoders alone would fail every registration on the table's CHECK (and
    embed-runs with it): the lists must move together, with the SQL transform and a revision."""
    from metaspace.encoders.branch import TRANSFORMS

    url, _ = encoders_db
    with connect(url, autocommit=True) as conn:
        check = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'encoder_features_transform_check'"
        ).fetchone()[0]
    assert sorted(re.findall(r"'(\w+)'::text", check)) == sorted(TRANSFORMS)
