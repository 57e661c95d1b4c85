"""Configs never tried, from the history of similar environments: the transfer model (metaspace/transfer.py),
``metaspace.propose`` and ``metaspace.TransferSampler``, with real Optuna studies imported through
``import-optuna`` into real PostgreSQL.

The history is a family of tasks with known optima: task i's best config sits at its env's ``(c1, c2)`` with
``kind`` its env's ``best_kind``, so a study in an environment like task i's should find a config near it in
a few trials, where a cold search cannot."""

from __future__ import annotations

import json
import math
import multiprocessing
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

import metaspace
from metaspace.cli import cli
from metaspace.sampler import space_from_distributions
from metaspace.transfer import MISSING, Param, Source, Space, TransferModel, normal_scores, one_thread

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"x1": FloatDistribution(0.0, 1.0), "x2": FloatDistribution(0.0, 1.0),
         "lr": FloatDistribution(1e-4, 1.0, log=True), "layers": IntDistribution(1, 8),
         "kind": CategoricalDistribution(("a", "b", "c"))}
KINDS = ("a", "b", "c")


def _env(i: int) -> dict:
    rng = np.random.default_rng(100 + i)
    return {"c1": round(float(rng.uniform(0.1, 0.9)), 4), "c2": round(float(rng.uniform(0.1, 0.9)), 4),
            "best_kind": KINDS[i % 3]}


def _score(env: dict, p: dict) -> float:
    return (-((p["x1"] - env["c1"]) ** 2 + (p["x2"] - env["c2"]) ** 2) - 0.02 * (math.log10(p["lr"]) + 2) ** 2
            - 0.01 * (p["layers"] - 4) ** 2 + (0.1 if p["kind"] == env["best_kind"] else 0.0))


def _objective(env: dict):
    def objective(trial: optuna.Trial) -> float:
        p = {"x1": trial.suggest_float("x1", 0.0, 1.0), "x2": trial.suggest_float("x2", 0.0, 1.0),
             "lr": trial.suggest_float("lr", 1e-4, 1.0, log=True), "layers": trial.suggest_int("layers", 1, 8),
             "kind": trial.suggest_categorical("kind", KINDS)}
        return _score(env, p)
    return objective


def _best_possible(env: dict) -> float:
    return _score(env, {"x1": env["c1"], "x2": env["c2"], "lr": 1e-2, "layers": 4, "kind": env["best_kind"]})


def _history(path: Path, tasks: int = 12, trials: int = 40, warm_start: int = 0) -> str:
    """Random searches of tasks 0..tasks-1; with warm_start n, each study first runs the best configs of the n
    studies before it (a team's usual warm start), so those configs repeat across environments."""
    storage = f"sqlite:///{path}"
    best: list[dict] = []
    for i in range(tasks):
        env = _env(i)
        study = optuna.create_study(study_name=f"toy-{i}", storage=storage, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=i))
        for key, value in env.items():
            study.set_user_attr(key, value)
        for params in best[-warm_start:] if warm_start else []:
            study.enqueue_trial(params)
        study.optimize(_objective(env), n_trials=trials)
        best.append(study.best_params)
    return storage


@pytest.fixture(scope="module")
def toy_db(server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from conftest import TEMPLATE, _create_database, _drop_database

    storage = _history(tmp_path_factory.mktemp("toy") / "optuna.db")
    name = f"x_{uuid.uuid4().hex[:12]}"
    url = _create_database(server_url, name, template=TEMPLATE)
    metaspace.import_optuna(storage, all_studies=True, database_url=url)
    metaspace.embed_runs(database_url=url)
    yield url
    metaspace.close()
    _drop_database(server_url, name)


def _run(sampler: optuna.samplers.BaseSampler, env: dict, n: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(_objective(env), n_trials=n)
    return study


def _regret(study: optuna.Study, env: dict, n: int) -> float:
    return _best_possible(env) - max(t.value for t in study.trials[:n])


# -- the model ------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5), st.integers(0, 2))
def test_a_config_decoded_from_the_cube_lies_in_the_space_and_encodes_back(u, kind) -> None:
    space = space_from_distributions(SPACE)
    row = np.zeros(space.width)
    for j, p in enumerate(space.params):
        if p.kind == "categorical":
            row[space.offsets[j] + kind] = 1.0
        else:
            row[space.offsets[j]] = u[j]
    config = space.decode(row)
    assert all(SPACE[name]._contains(SPACE[name].to_internal_repr(value)) for name, value in config.items())
    again = space.decode(space.encode([config])[0])
    assert again == config


STEPPED = {**SPACE, "width": IntDistribution(2, 1024, log=True), "frac": FloatDistribution(0.0, 1.0, step=0.1),
           "fixed": FloatDistribution(2.0, 2.0), "mixed": CategoricalDistribution(("x", 1, True, 1.0, None)),
           "edge": FloatDistribution(1.0051433296716599, 1.5077149945074897, log=True)}


def _number(value: object) -> bool:
    """What the cube takes as a number: an int or float (not a bool), finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _first_equal(choices: tuple, value: object) -> int:
    return next((i for i, c in enumerate(choices) if c == value), -1)


def _reference_row(space: Space, config: dict) -> np.ndarray:
    """The cube's rule for one config, parameter by parameter, in plain Python: the reference the whole-array
    code is held to."""
    row = np.zeros(space.width)
    for j, p in enumerate(space.params):
        a, value = space.offsets[j], config.get(p.name)
        if p.kind == "categorical":
            if (i := _first_equal(p.choices, value)) >= 0:
                row[a + i] = 1 / math.sqrt(2)
        elif not _number(value) or (p.log and value <= 0):
            row[a] = MISSING
        elif p.low == p.high:
            row[a] = 0.5
        else:
            lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
            row[a] = ((math.log(value) if p.log else value) - lo) / (hi - lo)
    return row


def _reference_config(space: Space, row: np.ndarray) -> dict:
    config = {}
    for j, p in enumerate(space.params):
        a, b = space.offsets[j], space.offsets[j + 1]
        if p.kind == "categorical":
            config[p.name] = p.choices[_first_equal(p.choices, p.choices[int(np.argmax(row[a:b]))])]
            continue
        lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
        value = lo + min(max(float(row[a]), 0.0), 1.0) * (hi - lo)
        value = math.exp(value) if p.log else value
        if p.step or p.kind == "int":
            value = p.low + round((value - p.low) / (p.step or 1)) * (p.step or 1)
        value = min(max(value, p.low), p.high)
        config[p.name] = int(round(value)) if p.kind == "int" else value
    return config


def _same_config(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        type(a[k]) is type(b[k]) and (a[k] == b[k] if not isinstance(a[k], float) else math.isclose(a[k], b[k],
                                                                                                    rel_tol=1e-12))
        for k in a)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40))
@example(seed=32257, n=18)  # a log value whose exp and log round trip moves it by an ulp
def test_rows_decode_and_snap_as_the_rule_says_row_by_row(seed, n) -> None:
    """The whole-array decode and snap (every proposal's candidates) are the per-row rule: a row decodes to the
    config the reference reads off it (a category to the first choice equal to it: 1, True and 1.0 are one
    config, as in Optuna), and snaps to that config's reference encoding; snapping again moves nothing beyond
    rounding (within the 1e-12 at which the model tells a config from one tried)."""
    space = space_from_distributions(STEPPED)
    rows = np.random.default_rng(seed).uniform(-0.6, 1.4, (n, space.width))
    snapped = space.snap(rows)
    for row, moved in zip(rows, snapped):
        config = space.decode(row)
        assert _same_config(config, _reference_config(space, row))
        assert np.allclose(moved, _reference_row(space, config), rtol=0, atol=1e-12)
        assert all(STEPPED[k]._contains(STEPPED[k].to_internal_repr(v)) for k, v in config.items())
    assert np.allclose(space.snap(snapped), snapped, rtol=0, atol=1e-12)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from((10**400, -(10**400), 2**53 + 1)),
                   st.floats(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
                   st.sampled_from(("a", "x", 1, 1.0, True, 3, 3.0, np.int64(4), np.float32(0.5), np.bool_(True),
                                    np.float64(0.25), 1.0051433296716599, 1.5077149945074897)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(sorted(STEPPED) + ["other"]), VALUES), min_size=1, max_size=4))
def test_any_value_encodes_as_the_rule_says_and_coverage_counts_the_values_inside(configs) -> None:
    """A past run's config may hold anything: a number inside a parameter's range lands in the cube (its bounds
    on 0 and 1), any other value is missing (a number) or no category, and a parameter is covered where at least
    half the configs hold a value inside the space."""
    space = space_from_distributions(STEPPED)
    rows, share = space.encode_with_coverage(configs)
    assert np.array_equal(rows, space.encode(configs))
    covered = 0
    for j, p in enumerate(space.params):
        a, b = space.offsets[j], space.offsets[j + 1]
        inside = 0
        for row, config in zip(rows, configs):
            value = config.get(p.name)
            if p.kind == "categorical":
                assert np.array_equal(row[a:b], _reference_row(space, config)[a:b])
                inside += _first_equal(p.choices, value) >= 0
            else:
                assert math.isclose(row[a], _reference_row(space, config)[a], rel_tol=0, abs_tol=1e-12)
                ok = _number(value) and p.low <= value <= p.high
                assert not ok or p.low == p.high or 0.0 <= row[a] <= 1.0
                inside += ok
        covered += inside >= 0.5 * len(configs)
    assert share == covered / len(space.params)


def test_overlapping_callers_share_one_limit_and_the_last_out_restores_the_pools() -> None:
    """Optuna's n_jobs runs trials in threads of one process, whose native thread pools are one: a caller
    leaving must not lift the limit under another still inside (per-call limits restored the pools then)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info()]

    with threadpool_limits(limits=2):
        before = threads()
        if max(before, default=1) < 2:
            pytest.skip("no native thread pool here runs more than one thread: nothing to limit")
        first, second = one_thread(), one_thread()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert max(threads()) == 1
        second.__exit__(None, None, None)
        assert threads() == before


def test_normal_scores_keep_the_order_and_share_ties() -> None:
    z = normal_scores(np.array([3.0, 1.0, 2.0, 2.0, 10.0]))
    assert z[4] > z[0] > z[2] == z[3] > z[1] and z[4] == -z[1]


def _toy_sources(space: Space, shift: float = 0.0) -> list[Source]:
    rng = np.random.default_rng(5)
    sources = []
    for i in range(6):
        env = _env(i)
        configs = [space.decode(row) for row in space.uniform(rng, 40)]
        y = np.array([_score(env, c) for c in configs])
        sources.append(Source(f"s{i}", space.encode(configs), y, distance=float(i) + shift).fit())
    return sources


def test_the_responses_of_a_study_tell_which_source_it_resembles() -> None:
    space = space_from_distributions(SPACE)
    model = TransferModel(space, _toy_sources(space), seed=1)
    target = _env(4)  # source s4's own function, although no env distance says so (uniform prior below)
    model.prior = np.full(len(model.sources), 1 / len(model.sources))
    rng = np.random.default_rng(9)
    configs = [space.decode(r) for r in space.uniform(rng, 12)]
    tried = space.encode(configs)
    w = model.weights(model.predict(tried), np.array([_score(target, c) for c in configs]))
    assert int(np.argmax(w)) == 4 and w[4] > 0.4 and w[4] > 1.5 * np.sort(w)[-2]


def test_a_study_the_sources_order_worse_than_a_coin_is_handed_over() -> None:
    space = space_from_distributions(SPACE)
    model = TransferModel(space, _toy_sources(space), seed=1)
    rng = np.random.default_rng(3)
    configs = [space.decode(r) for r in space.uniform(rng, 14)]
    tried = space.encode(configs)
    mu = model.predict(tried)
    consensus = model.prior @ mu
    assert model.related(mu, consensus)  # a study that behaves as the sources predict
    assert not model.related(mu, -consensus)  # one that does the opposite of what they all predict
    assert model.related(mu[:, :4], -consensus[:4])  # four trials say too little to hand over


def test_proposals_are_the_models_choice_not_a_replay_of_past_configs() -> None:
    space = space_from_distributions(SPACE)
    sources = _toy_sources(space)
    model = TransferModel(space, sources, seed=2)
    past = {json.dumps(space.decode(row), sort_keys=True) for s in sources for row in s.x}
    pending = np.empty((0, space.width))
    proposals = []
    for _ in range(8):
        row, proposal = model.propose(np.empty((0, space.width)), np.empty(0), pending=pending)
        pending = np.vstack([pending, row])
        proposals.append(json.dumps(proposal.config, sort_keys=True))
        assert proposal.sources and all(0.0 <= s["percentile"] <= 1.0 for s in proposal.sources)
    assert len(set(proposals)) == 8  # a portfolio, not the same config eight times
    assert len(set(proposals) & past) <= 2  # mostly new points; a past best only where the model puts its mass


def test_a_study_is_never_proposed_a_config_it_has_tried_even_where_the_space_is_a_grid() -> None:
    """Rows of the cube that decode to one config (an integer, a step) were told apart only as rows: the README's
    tour saw {'lr': 0.0221, 'max_depth': 5} proposed at trials 3, 5, 6 and 7 of one study."""
    space = Space([Param("depth", "int", 2, 12), Param("rounds", "int", 1, 4),
                   Param("kind", "categorical", choices=("a", "b"))])
    rng = np.random.default_rng(4)
    sources = []
    for i in range(5):
        configs = [space.decode(r) for r in space.uniform(rng, 30)]
        y = np.array([-(c["depth"] - 6 - i / 2) ** 2 - (c["rounds"] - 2) ** 2 + (c["kind"] == "a") for c in configs])
        sources.append(Source(f"s{i}", space.encode(configs), y, distance=float(i)).fit())
    model = TransferModel(space, sources, seed=5)
    tried, y, seen = np.empty((0, space.width)), np.empty(0), []
    for _ in range(30):
        _, proposal = model.propose(tried, y)
        config = proposal.config
        seen.append(json.dumps(config, sort_keys=True))
        tried = np.vstack([tried, space.encode([config])])
        y = np.append(y, -(config["depth"] - 7) ** 2 - (config["rounds"] - 2) ** 2 + (config["kind"] == "a"))
    assert len(set(seen)) == len(seen), [c for c in seen if seen.count(c) > 1][:3]


# -- against the store ----------------------------------------------------------------------------------------


def test_a_study_in_a_known_environment_finds_a_good_config_in_a_few_trials(toy_db: str) -> None:
    target = dict(_env(3), c1=round(_env(3)["c1"] + 0.02, 4))  # a new study next to task 3's environment
    transfer, cold = [], []
    for seed in range(3):
        study = _run(metaspace.TransferSampler(target, seed=seed, database_url=toy_db), target, 6)
        transfer.append(_regret(study, target, 6))
        cold.append(_regret(_run(optuna.samplers.TPESampler(seed=seed), target, 30), target, 30))
        summaries = [t.user_attrs.get("metaspace:transfer") for t in study.trials]
        assert all(s and s["sources"] == 12 for s in summaries)
    assert np.mean(transfer) < np.mean(cold), (transfer, cold)  # six trials beat a cold search's thirty
    assert np.mean(transfer) < 0.1


def test_with_no_history_the_trials_are_exactly_the_base_samplers(db_url: str) -> None:
    env = _env(1)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        ours = optuna.create_study(direction="maximize",
                                   sampler=metaspace.TransferSampler(env, seed=7, database_url=db_url))
        ours.optimize(_objective(env), n_trials=8)
    assert any("nothing to transfer from" in str(w.message) for w in said)
    base = _run(optuna.samplers.TPESampler(seed=7), env, 8)
    assert [t.params for t in ours.trials] == [t.params for t in base.trials]


def test_without_a_reachable_database_it_warns_once_and_samples_as_its_base() -> None:
    env = _env(2)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        study = optuna.create_study(direction="maximize", sampler=metaspace.TransferSampler(
            env, seed=4, database_url="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"))
        study.optimize(_objective(env), n_trials=5)
    notes = [str(w.message) for w in said if "cannot be reached" in str(w.message)]
    assert len(notes) == 1
    base = _run(optuna.samplers.TPESampler(seed=4), env, 5)
    assert [t.params for t in study.trials] == [t.params for t in base.trials]


def test_a_multi_objective_study_is_sampled_by_the_base_and_says_so(toy_db: str) -> None:
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        study = optuna.create_study(directions=["maximize", "minimize"],
                                    sampler=metaspace.TransferSampler(_env(0), seed=1, database_url=toy_db))
        study.optimize(lambda t: (t.suggest_float("x1", 0, 1), t.suggest_float("x2", 0, 1)), n_trials=3)
    assert any("multi-objective studies are not supported" in str(w.message) for w in said)
    assert all("metaspace:transfer" not in t.user_attrs for t in study.trials)


def _space_file(path: Path) -> Path:
    path.write_text(json.dumps({name: json.loads(distribution_to_json(d)) for name, d in SPACE.items()}))
    return path


def test_history_dated_after_the_study_never_moves_a_proposal(toy_db: str, tmp_path: Path) -> None:
    from metaspace import pipeline

    space = _space_file(tmp_path / "space.json")
    env = _env(5)
    before = metaspace.propose(env, space=str(space), n=4, as_of="2099-12-31", database_url=toy_db)
    with psycopg.connect(toy_db) as conn:
        latest = conn.execute("SELECT max(as_of_date) FROM historical_db.runs").fetchone()[0]
    day = latest.isoformat()
    asked = metaspace.propose(env, space=str(space), n=4, as_of=day, database_url=toy_db)
    later = [{"run_id": f"LATER_{i}", "as_of_date": "2100-01-01", "strategy_id": "toy-later",
              "config": {"x1": 0.99, "x2": 0.01, "lr": 1.0, "layers": 1, "kind": "c"},
              "env": env, "outcome": {"value": 100.0 + i}} for i in range(30)]
    pipeline.import_records((("later", i, r) for i, r in enumerate(later)), database_url=toy_db)
    pipeline.embed_runs(database_url=toy_db)
    try:
        again = metaspace.propose(env, space=str(space), n=4, as_of=day, database_url=toy_db)
        future = metaspace.propose(env, space=str(space), n=4, as_of="2100-01-01", database_url=toy_db)
    finally:
        with psycopg.connect(toy_db) as conn:
            conn.execute("DELETE FROM historical_db.runs WHERE run_id LIKE 'LATER_%'")
    assert again == asked == before
    assert future != asked and any(s["source"] == "toy-later" for p in future for s in p["sources"])


def test_a_study_never_transfers_from_a_strategy_it_excludes(toy_db: str, tmp_path: Path) -> None:
    space = _space_file(tmp_path / "space.json")
    proposals = metaspace.propose(_env(2), space=str(space), n=3, exclude=["toy-2", "toy-5"], database_url=toy_db)
    assert proposals and not {s["source"] for p in proposals for s in p["sources"]} & {"toy-2", "toy-5"}


def test_propose_on_the_command_line_prints_configs_with_their_evidence(toy_db: str, tmp_path: Path) -> None:
    space = _space_file(tmp_path / "space.json")
    env = tmp_path / "env.json"
    env.write_text(json.dumps(_env(6)))
    result = CliRunner().invoke(cli, ["--database-url", toy_db, "propose", "--env", str(env), "--space", str(space),
                                      "-n", "3", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and all(set(r["config"]) == set(SPACE) for r in rows)
    assert rows[0]["sources"][0]["source"].startswith("toy-") and rows[0]["sources"][0]["objective"] == "outcome.value"
    table = CliRunner().invoke(cli, ["--database-url", toy_db, "propose", "--env", str(env), "--space", str(space)])
    assert table.exit_code == 0 and "backed most by" in table.output


def _worker(storage: str, name: str, url: str, trials: int) -> None:
    study = optuna.load_study(study_name=name, storage=storage,
                              sampler=metaspace.TransferSampler(_env(8), seed=None, database_url=url))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(_objective(_env(8)), n_trials=trials)


def test_two_worker_processes_share_a_study_on_an_rdb_storage(toy_db: str, server_url: str) -> None:
    from conftest import _create_database, _drop_database

    name = f"o_{uuid.uuid4().hex[:10]}"
    optuna_url = _create_database(server_url, name)
    params = psycopg.conninfo.conninfo_to_dict(optuna_url)
    storage = ("postgresql+psycopg://" + f"{params.get('user', 'postgres')}@/{params['dbname']}?host={params['host']}"
               + (f"&port={params['port']}" if params.get("port") else ""))
    try:
        optuna.create_study(study_name="shared", storage=storage, direction="maximize")
        context = multiprocessing.get_context("fork")
        workers = [context.Process(target=_worker, args=(storage, "shared", toy_db, 5)) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert [w.exitcode for w in workers] == [0, 0]
        study = optuna.load_study(study_name="shared", storage=storage)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == 10 and all("metaspace:transfer" in t.user_attrs for t in done)
        assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 10
    finally:
        _drop_database(server_url, name)


def test_a_space_param_is_a_param_of_the_model() -> None:
    space = space_from_distributions({"lr": json.loads(distribution_to_json(SPACE["lr"])), "kind": SPACE["kind"]})
    assert space.params == [Param("kind", "categorical", choices=("a", "b", "c")),
                            Param("lr", "float", 1e-4, 1.0, True, None)]


# -- suggest on a search's history (suggest_configs_v7) ---------------------------------------------------------


def test_suggest_on_a_warm_started_search_history_still_tells_configs_apart(
        server_url: str, template_url: str, tmp_path: Path) -> None:
    """Each study first runs the best configs of the three before it, so those configs ran in several
    environments. Their spread across environments was taken as one trial's noise: every score was about
    1e-6 and every confidence 0.5000 (seen in the README's tour on an Optuna and an MLflow history)."""
    from conftest import TEMPLATE, _create_database, _drop_database

    storage = _history(tmp_path / "optuna.db", warm_start=3)
    name = f"x_{uuid.uuid4().hex[:12]}"
    url = _create_database(server_url, name, template=TEMPLATE)
    try:
        metaspace.import_optuna(storage, all_studies=True, database_url=url)
        metaspace.embed_runs(database_url=url)
        with psycopg.connect(url) as conn:
            repeated = conn.execute("SELECT count(*) FROM (SELECT config_id FROM historical_db.runs "
                                    "GROUP BY config_id HAVING count(DISTINCT strategy_id) > 1) c").fetchone()[0]
        assert repeated >= 5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = metaspace.suggest(_env(3), objective="value", min_runs=1, k=10, database_url=url)
        assert max(r["deflated_confidence"] for r in rows) > 0.7
        assert rows[0]["score"] - rows[-1]["score"] > 0.1
    finally:
        metaspace.close()
        _drop_database(server_url, name)


def test_suggest_on_a_search_history_says_why_it_is_empty_and_then_ranks_near_studies_with_bounded_confidence(
        toy_db: str) -> None:
    """Version 6 on such a history: nothing by default, and with min_runs 1 the configs of the farthest studies
    with a confidence of 1.0 and an edge_z of 5e5, each from one run."""
    env = _env(3)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert metaspace.suggest(env, objective="value", database_url=toy_db) == []
    assert any("none ran in 3 or more environments" in str(w.message) and "Lower min_runs to 1" in str(w.message)
               for w in said)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = metaspace.suggest(env, objective="value", min_runs=1, k=10, database_url=toy_db)
    assert len(rows) == 10
    assert all(0.5 <= r["deflated_confidence"] < 0.99 and abs(r["edge_z"]) < 50 for r in rows)
    with psycopg.connect(toy_db) as conn:
        study = conn.execute("SELECT strategy_id FROM historical_db.runs WHERE run_id = %s",
                             (rows[0]["best_run_id"],)).fetchone()[0]
    assert study == "toy-3"  # the study in this very environment, not the one whose trials scored highest
