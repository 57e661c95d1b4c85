"""``metaspace.TransferSampler``: an Optuna sampler that proposes configs never tried, from the history of
similar environments in the store, and hands over to its base sampler where that history does not help.

    sampler = metaspace.TransferSampler(env={"n_samples": 5000, "n_features": 20, "task": "binary"})
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=30)

Each trial is planned as it starts (``before_trial``): the whole config is proposed at once by the transfer
model (metaspace/transfer.py) over the study's search space (the distributions its trials have used, or
``space=``; before the first trial, the parameters the nearest past environments' runs have), and each
parameter the objective asks for is answered from that plan where the value lies inside its distribution;
any other parameter (a conditional one the plan lacks, a range the plan falls outside) is sampled by the
base sampler, independently, as Optuna's relative samplers do. The plan is kept in the trial's system
attributes (``metaspace:proposal``), so that other workers count it as pending, and a summary of the sources
that informed it in a user attribute (``metaspace:transfer``), which ``import-optuna`` files back with the
trial: the next study learns from this one.

The base sampler (TPE by default) samples a trial whole when there is nothing to transfer (no history in
the store near this environment and space, or no database), when the study is multi-objective (not
supported: said once), and when the sources order the study's own results no better than chance. With no
history the trials are exactly the base sampler's (same seed, one process). Nothing the sampler keeps could
not be rebuilt by another worker: the history comes from the store, the study's evidence from its storage.
"""

from __future__ import annotations

import json
import math
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    json_to_distribution,
)
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from metaspace.errors import MetaspaceError
from metaspace.transfer import Param, Space, one_thread

PLAN = "metaspace:proposal"
SUMMARY = "metaspace:transfer"
SUMMARY_LIMIT = 1000  # characters of the user attribute (Optuna's storages keep more; a summary needs less)


def param_from(name: str, distribution: BaseDistribution) -> Param:
    """An Optuna distribution as the transfer model's parameter."""
    if isinstance(distribution, CategoricalDistribution):
        return Param(name, "categorical", choices=tuple(distribution.choices))
    if isinstance(distribution, IntDistribution):
        return Param(name, "int", distribution.low, distribution.high, distribution.log, distribution.step)
    if isinstance(distribution, FloatDistribution):
        return Param(name, "float", distribution.low, distribution.high, distribution.log, distribution.step)
    raise MetaspaceError(f"parameter {name!r}: {type(distribution).__name__} is not a distribution metaspace knows")


def space_from_distributions(distributions: Mapping[str, Any]) -> Space:
    """A Space from Optuna distributions, or their JSON (``optuna.distributions.distribution_to_json``, as a
    string or as the object it encodes)."""
    params = []
    for name, value in distributions.items():
        if isinstance(value, Mapping):
            value = json.dumps(value)
        if isinstance(value, str):
            try:
                value = json_to_distribution(value)
            except (ValueError, KeyError, TypeError) as exc:
                raise MetaspaceError(f"parameter {name!r}: not an Optuna distribution's JSON: {exc}") from None
        params.append(param_from(str(name), value))
    return Space(sorted(params, key=lambda p: p.name))


def _provisional_space(history_rows: list[dict[str, Any]]) -> Space:
    """Before a study's first trial: the parameters that most runs of the nearest environments have, with
    the types and ranges they took there (numbers on a log scale where they span two decades or more)."""
    from metaspace.encoders.features import flatten

    flats = [flatten(c) for c in history_rows]
    params = []
    for key in sorted({k for f in flats for k in f}):
        values = [f[key] for f in flats if f.get(key) is not None]
        if len(values) < 0.5 * len(flats):
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            low, high = float(min(values)), float(max(values))
            if high <= low:
                continue
            kind = "int" if all(isinstance(v, int) for v in values) else "float"
            params.append(Param(key, kind, low, high, low > 0 and high / low >= 100))
        elif all(isinstance(v, (str, bool)) for v in values):
            params.append(Param(key, "categorical", choices=tuple(sorted(set(values), key=str))))
    return Space(params)


class TransferSampler(BaseSampler):
    """An Optuna sampler for a new study in environment ``env`` that transfers from the studies (or any runs)
    in the store whose environments are near it, as of ``as_of`` (default: today; nothing dated later is
    read). ``exclude``: strategies (study names) never to transfer from: a study run again must not learn from
    itself. ``objective``: the outcome key the history's runs report (default: Optuna's ``value``, else the
    store's only numeric outcome key). ``space``: the search space, as Optuna distributions, if the sampler
    should not learn it from the study's trials. ``map``: the ``--map`` that ``import-optuna`` used.
    ``base_sampler``: what samples where there is nothing to transfer (``TPESampler(seed=seed)``)."""

    def __init__(self, env: Mapping[str, Any] | None = None, *, as_of: Any = None,
                 base_sampler: BaseSampler | None = None, seed: int | None = None, exclude: str | Sequence[str] = (),
                 objective: str | None = None, space: Mapping[str, BaseDistribution] | None = None,
                 map: Any = None, database_url: str | None = None) -> None:  # noqa: A002
        self.env = dict(env) if env else None
        self.as_of, self.seed, self.objective, self.map = as_of, seed, objective, map
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        self.space = dict(space) if space else None
        self.database_url = database_url
        self.base = base_sampler if base_sampler is not None else optuna.samplers.TPESampler(seed=seed)
        self._plans: dict[tuple[int, int], dict[str, Any] | None] = {}
        self._lock = threading.Lock()
        self._said: set[str] = set()
        self._offline = False

    # -- what Optuna calls ------------------------------------------------------------------------------------

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self.seed = None if self.seed is None else self.seed + 1

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        plan = None
        if trial.system_attrs.get("fixed_params") is None:
            plan = self._plan(study, trial)
        with self._lock:
            self._plans[(study._study_id, trial._trial_id)] = plan
        self.base.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._planned(study, trial) is not None:
            return {}
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self._planned(study, trial) is not None:
            return {}
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        plan = self._planned(study, trial)
        if plan is not None and param_name in plan:
            value = plan[param_name]
            try:
                if param_distribution._contains(param_distribution.to_internal_repr(value)):
                    return value
            except (ValueError, TypeError):
                pass
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        with self._lock:
            self._plans.pop((study._study_id, trial._trial_id), None)
        self.base.after_trial(study, trial, state, values)

    # -- planning ---------------------------------------------------------------------------------------------

    def _planned(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        with self._lock:
            return self._plans.get((study._study_id, trial._trial_id))

    def _say(self, note: str) -> None:
        if note not in self._said:
            self._said.add(note)
            warnings.warn(f"TransferSampler: {note}", stacklevel=3)

    def _study_space(self, study: optuna.Study, trials: list[FrozenTrial]) -> dict[str, BaseDistribution]:
        if self.space is not None:
            return self.space
        known: dict[str, BaseDistribution] = {}
        for t in trials:
            known.update(t.distributions)
        return known

    def _plan(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        """The whole config for this trial, or None to leave it to the base sampler."""
        from metaspace.proposals import load_history

        if self._offline:
            return None
        if study._is_multi_objective():
            self._say("multi-objective studies are not supported: every trial is sampled by the base sampler")
            return None
        trials = study.get_trials(deepcopy=False)
        distributions = self._study_space(study, trials)
        higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
        try:
            if distributions:
                space = Space(sorted((param_from(n, d) for n, d in distributions.items()), key=lambda p: p.name))
            else:
                space = self._first_space(higher)
                if space is None:
                    return None
            history = load_history(space, env=self.env, as_of=self.as_of, exclude=self.exclude,
                                   objective=self.objective, higher_is_better=higher, map=self.map,
                                   seed=self.seed, database_url=self.database_url)
        except MetaspaceError as exc:
            self._say(f"{exc}: every trial is sampled by the base sampler")
            return None
        except Exception as exc:  # noqa: BLE001 (a database that cannot be reached: carry on without it)
            if type(exc).__module__.split(".")[0] != "psycopg":
                raise
            self._offline = True
            self._say(f"the store cannot be reached ({str(exc).strip().splitlines()[0]}): every trial is sampled "
                      "by the base sampler")
            return None
        for note in history.notes:
            self._say(note)
        if history.model is None:
            return None
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
        sign = 1.0 if higher else -1.0
        tried = space.encode([t.params for t in done])
        y = np.array([sign * t.value for t in done])
        with one_thread():
            mu = history.model.predict(tried) if len(done) else np.empty((len(history.model.sources), 0))
        if not history.model.related(mu, y):
            self._say("the history's environments order this study's results no better than chance: its trials "
                      "are sampled by the base sampler while that holds")
            return None
        running = [t for t in trials if t.state == TrialState.RUNNING and t.number != trial.number
                   and isinstance(t.system_attrs.get(PLAN), dict)]
        pending = space.encode([t.system_attrs[PLAN] for t in running]) if running else None
        with one_thread():
            _, proposal = history.model.propose(tried, y, tried_mu=mu, pending=pending)
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, PLAN, proposal.config)
        summary = {"sources": len(history.model.sources), "origin": proposal.origin,
                   "own_weight": proposal.own_weight,
                   "top": [{"source": s["source"], "weight": s["weight"], "distance": s["distance"]}
                           for s in proposal.sources[:3]]}
        text = json.dumps(summary)
        while len(text) > SUMMARY_LIMIT and summary["top"]:
            summary["top"].pop()
            text = json.dumps(summary)
        storage.set_trial_user_attr(trial._trial_id, SUMMARY, summary)
        return proposal.config

    def _first_space(self, higher: bool) -> Space | None:
        """The space of the first trial: what most runs of the nearest environments have."""
        from metaspace.proposals import nearest_configs

        configs = nearest_configs(env=self.env, as_of=self.as_of, exclude=self.exclude, objective=self.objective,
                                  database_url=self.database_url)
        space = _provisional_space(configs)
        return space if space.params else None


__all__ = ["TransferSampler", "param_from", "space_from_distributions"]
