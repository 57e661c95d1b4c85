"""Where good configs lie, learned from the runs of similar environments: the model behind
``metaspace.TransferSampler`` and ``metaspace propose``. Pure numpy; never touches the database.

A study's search space is mapped to a unit cube (:class:`Space`). Each source (the runs of one past
environment, for example one past study) gets a Gaussian process over its configs, fitted to the normal
scores of its objective (its ranks, so that sources of different scales compare). The model then proposes,
one config at a time, the candidate that maximises the expected improvement **over the configs the study has
already tried, in every source's eyes**, weighted by how much each source is believed to resemble the study:

- before the study's first trial, by how close its environment is (a Gaussian kernel of the env distance,
  its bandwidth the distance to the k-th nearest source, k a tenth of the sources and at most
  ``prior_sources``; uniform when no env was given);
- as trials come in, also by how well each source ranks the study's own results (a pairwise likelihood of
  the observed order under the source's predictions): the study's responses tell which sources it resembles
  where its descriptors are missing or weak;
- and the study's own Gaussian process takes over as its evidence grows (weight n / (n + ``own_evidence``)).

Candidates come from the sources' best regions (each source's best configs and perturbations of them), from
around the study's best trials, and from the whole space: a proposal is a point of the model's choosing, not a
replay of a past config (it is one only where the model puts its mass there). Trials that no source explains
better than chance (:meth:`TransferModel.related`) are left to the caller's base sampler.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.special import ndtr, ndtri

MISSING = -0.5  # a numeric parameter a config does not have: half a range away from any value it can take
ONE_HOT = 1 / math.sqrt(2)  # two different categories are 1 apart, as in the encoders


@dataclass(frozen=True)
class Param:
    """One parameter of a search space: ``float``, ``int`` (with ``low``, ``high``, ``log``, ``step``) or
    ``categorical`` (``choices``)."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def bounds(self) -> tuple[float, float]:
        """The range on the cube's scale: the logarithms of low and high on a log scale."""
        return (float(np.log(self.low)), float(np.log(self.high))) if self.log else (self.low, self.high)


class Space:
    """A search space as a unit cube: numbers scaled to [0, 1] (on a log scale where the parameter is),
    categories one-hot."""

    def __init__(self, params: Sequence[Param]):
        self.params = list(params)
        widths = [len(p.choices) if p.kind == "categorical" else 1 for p in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
        self.width = int(self.offsets[-1])
        self.names = [p.name for p in self.params]

    def _scale(self, p: Param, values: np.ndarray) -> np.ndarray:
        """Values of ``p`` (finite; positive where ``p`` is on a log scale) as coordinates of the cube (the bounds
        and the values through one logarithm, numpy's, so that low and high land on 0 and 1 exactly)."""
        lo, hi = p.bounds()
        if not hi > lo:
            return np.full(len(values), 0.5)
        return ((np.log(values) if p.log else values) - lo) / (hi - lo)

    def _column(self, p: Param, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``p``'s value in each config: for a categorical parameter the index of the first choice equal to it
        (-1: none, or a value that cannot be compared with them), else the number (NaN: missing, not a finite
        number, or not positive on a log scale)."""
        values = [config.get(p.name) for config in configs]
        if p.kind == "categorical":
            return np.array([_index(p.choices, v) for v in values], dtype=int)
        out = np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v)
                        else math.nan for v in values], dtype=float)
        if p.log:
            out[~(out > 0)] = math.nan
        return out

    def _encoded(self, columns: Sequence[np.ndarray], n: int) -> np.ndarray:
        out = np.zeros((n, self.width))
        for j, (p, column) in enumerate(zip(self.params, columns)):
            a = self.offsets[j]
            if p.kind == "categorical":
                chosen = column >= 0
                out[np.flatnonzero(chosen), a + column[chosen]] = ONE_HOT
            else:
                known = ~np.isnan(column)
                out[:, a] = MISSING
                out[known, a] = self._scale(p, column[known])
        return out

    def encode(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Configs (parameter name -> value; missing or foreign values allowed) as rows of the unit cube."""
        return self._encoded([self._column(p, configs) for p in self.params], len(configs))

    def encode_with_coverage(self, configs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, float]:
        """:meth:`encode` of the configs, and the share of the space's parameters that most of them give a value
        inside the space for."""
        columns = [self._column(p, configs) for p in self.params]
        return self._encoded(columns, len(configs)), self._covered(columns, len(configs))

    def _decoded_columns(self, rows: np.ndarray) -> list[np.ndarray]:
        """Rows of the cube as the values of the configs they decode to, parameter by parameter (for a
        categorical one, the index of the first choice equal to the chosen one, as :meth:`encode` reads it back):
        clipped, rounded to the step, integers whole."""
        columns = []
        for j, p in enumerate(self.params):
            a, b = self.offsets[j], self.offsets[j + 1]
            if p.kind == "categorical":
                first_equal = np.array([p.choices.index(c) for c in p.choices], dtype=int)
                columns.append(first_equal[np.argmax(rows[:, a:b], axis=1)])
                continue
            lo, hi = p.bounds()
            value = lo + np.clip(rows[:, a], 0.0, 1.0) * (hi - lo)
            value = np.exp(value) if p.log else value
            if p.step or p.kind == "int":
                step = p.step or 1
                value = p.low + np.round((value - p.low) / step) * step
            value = np.clip(value, p.low, p.high)
            columns.append(np.round(value) if p.kind == "int" else value)
        return columns

    def decode(self, u: np.ndarray) -> dict[str, Any]:
        """A row of the cube as a config inside the space (clipped, rounded to the step, integers as int)."""
        columns = self._decoded_columns(np.asarray(u, dtype=float)[None, :])
        return {p.name: p.choices[int(c[0])] if p.kind == "categorical" else int(c[0]) if p.kind == "int"
                else float(c[0]) for p, c in zip(self.params, columns)}

    def snap(self, rows: np.ndarray) -> np.ndarray:
        """Rows moved to the configs they decode to (integers, steps, one category), so that two rows are one
        config exactly when they are equal."""
        return self._encoded(self._decoded_columns(rows), len(rows)) if len(rows) else rows

    def uniform(self, rng: np.random.Generator, n: int) -> np.ndarray:
        out = np.zeros((n, self.width))
        for j, p in enumerate(self.params):
            a, b = self.offsets[j], self.offsets[j + 1]
            if p.kind == "categorical":
                out[np.arange(n), a + rng.integers(0, b - a, n)] = ONE_HOT
            else:
                out[:, a] = rng.uniform(0, 1, n)
        return out

    def perturb(self, rng: np.random.Generator, rows: np.ndarray, scale: float) -> np.ndarray:
        """Rows moved a little: numbers by a normal step of ``scale`` (clipped to the cube), a category changed
        with probability ``2 * scale``; a parameter a row does not have stays absent."""
        out = rows.copy()
        for j, p in enumerate(self.params):
            a, b = self.offsets[j], self.offsets[j + 1]
            if p.kind == "categorical":
                flip = rng.uniform(size=len(out)) < min(0.5, 2 * scale)
                if flip.any():
                    out[flip, a:b] = 0.0
                    out[np.flatnonzero(flip), a + rng.integers(0, b - a, int(flip.sum()))] = ONE_HOT
            else:
                column = out[:, a]
                present = column >= 0
                column[present] = np.clip(column[present] + rng.normal(0, scale, int(present.sum())), 0, 1)
        return out

    def _covered(self, columns: Sequence[np.ndarray], n: int) -> float:
        """The share of the parameters for which at least half of the ``n`` configs hold a value inside the
        space (``columns``: :meth:`_column`'s)."""
        if not n or not self.params:
            return 0.0
        covered = 0
        for p, column in zip(self.params, columns):
            inside = column >= 0 if p.kind == "categorical" else (column >= p.low) & (column <= p.high)
            covered += int(inside.sum()) >= 0.5 * n
        return covered / len(self.params)


def _index(choices: tuple[Any, ...], value: Any) -> int:
    try:
        return choices.index(value)
    except ValueError:
        return -1


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def normal_scores(values: np.ndarray) -> np.ndarray:
    """Values as standard normal quantiles of their ranks (ties share their mean rank): higher is better in,
    higher out, whatever the objective's scale."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n)
    sorted_values = values[order]
    start = 0
    while start < n:
        stop = start
        while stop + 1 < n and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2
        start = stop + 1
    return ndtri((ranks + 0.5) / n)


class _OneThread:
    """The native thread pools (BLAS, OpenMP) limited to one thread while any caller is inside; the limit is the
    process's, so the threads of one process (Optuna's ``n_jobs``) share it: the first in sets it, the last out
    restores the pools. The controller, which reads the libraries the process holds (a read of its memory map,
    about a millisecond), is kept until a module is imported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._limiter: Any = None
        self._controller: Any = None
        self._modules = -1

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                if self._controller is None or self._modules != len(sys.modules):
                    from threadpoolctl import ThreadpoolController

                    self._controller, self._modules = ThreadpoolController(), len(sys.modules)
                self._limiter = self._controller.limit(limits=1)
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                self._limiter.restore_original_limits()
                self._limiter = None


_ONE_THREAD = _OneThread()


def one_thread() -> AbstractContextManager[None]:
    """A context in which the model's linear algebra runs on one thread: its matrices are small, and threads
    only contend, most of all in parallel workers."""
    return _ONE_THREAD


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d2, 0.0)


class GaussianProcess:
    """A zero-mean GP with a squared-exponential kernel of unit variance; its length scale and noise chosen
    from small grids by marginal likelihood (on normal scores, a unit-variance signal)."""

    def __init__(self, x: np.ndarray, z: np.ndarray, lengths: Sequence[float] = (0.1, 0.2, 0.35, 0.6, 1.0),
                 noises: Sequence[float] = (0.05, 0.2, 0.5)):
        self.x = x
        d2 = _sq_distances(x, x)
        best = None
        for length in lengths:
            base = np.exp(-d2 / (2 * length * length))
            for noise in noises:
                try:
                    chol = cho_factor(base + noise * np.eye(len(z)), lower=True)
                except np.linalg.LinAlgError:
                    continue
                alpha = cho_solve(chol, z)
                evidence = -0.5 * float(z @ alpha) - float(np.log(np.diag(chol[0])).sum())
                if best is None or evidence > best[0]:
                    best = (evidence, length, noise, chol, alpha)
        if best is None:
            raise ValueError("no length scale gave a positive-definite kernel")
        _, self.length, self.noise, self._chol, self._alpha = best

    def _k(self, x: np.ndarray) -> np.ndarray:
        return np.exp(-_sq_distances(x, self.x) / (2 * self.length ** 2))

    def mean(self, x: np.ndarray) -> np.ndarray:
        return self._k(x) @ self._alpha

    def mean_sd(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = self._k(x)
        v = cho_solve(self._chol, k.T)
        return k @ self._alpha, np.sqrt(np.maximum(1.0 - (k * v.T).sum(1), 1e-12))


@dataclass
class Source:
    """The runs of one past environment in the study's space: their configs as cube rows, their objective
    (higher is better), and how far their environment is from the study's (None: not known)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    distance: float | None = None
    runs: int = 0
    gp: GaussianProcess | None = field(default=None, repr=False)

    def fit(self) -> Source:
        self.gp = GaussianProcess(self.x, normal_scores(self.y))
        self.runs = len(self.y)
        return self


@dataclass(frozen=True)
class Proposal:
    """A proposed config and the evidence behind it: the sources that back it most (name, weight, env distance,
    runs, and the percentile of their runs where they predict it), what the study's own results already weigh
    (``own_weight``), and where it came from."""

    config: dict[str, Any]
    sources: list[dict[str, Any]]
    own_weight: float
    origin: str


class TransferModel:
    """The sources' knowledge of a space, turned into proposals for a study (module docstring)."""

    def __init__(self, space: Space, sources: Sequence[Source], *, seed: int | None = None, prior_sources: int = 10,
                 own_evidence: float = 8.0, responses_from: int = 5, pool_best: int = 5, pool_moved: int = 1200,
                 pool_uniform: int = 200, local: int = 200, scored_sources: int = 20):
        if not sources:
            raise ValueError("a transfer model needs at least one source")
        self.space, self.sources = space, list(sources)
        self.rng = np.random.default_rng(seed)
        self.own_evidence, self.responses_from = own_evidence, responses_from
        self.local, self.scored_sources = local, scored_sources
        self.prior = self._prior(prior_sources)
        best = [s.x[np.argsort(-s.y, kind="stable")[:pool_best]] for s in self.sources]
        picked = self.rng.choice(len(self.sources), size=pool_moved, p=self.prior)
        moved = np.stack([best[i][self.rng.integers(len(best[i]))] for i in picked])
        self.pool = self.space.snap(np.vstack([np.vstack(best), self.space.perturb(self.rng, moved, 0.05),
                                               self.space.uniform(self.rng, pool_uniform)]))
        self.pool_origin = np.array(["a source's best"] * sum(len(b) for b in best)
                                    + ["near a source's best"] * pool_moved + ["anywhere"] * pool_uniform)
        raw = np.stack([s.gp.mean(self.pool) for s in self.sources])
        # each source's predictions on one scale (over the pool), so that no source weighs more for its spread
        self._centre, self._spread = raw.mean(1), raw.std(1) + 1e-12
        self.pool_mu = (raw - self._centre[:, None]) / self._spread[:, None]

    def _prior(self, prior_sources: int) -> np.ndarray:
        known = [s.distance for s in self.sources if s.distance is not None]
        if not known:
            return np.full(len(self.sources), 1.0 / len(self.sources))
        far = max(known)
        d = np.array([far if s.distance is None else s.distance for s in self.sources])
        kth = min(max(1, min(prior_sources, len(d) // 10)), len(d) - 1)  # a tenth of the sources, at most 10
        bandwidth = max(float(np.sort(d)[kth]), 1e-9)
        prior = np.exp(-0.5 * (d / bandwidth) ** 2)
        return prior / prior.sum()

    def predict(self, x: np.ndarray, which: Sequence[int] | None = None) -> np.ndarray:
        """Each source's prediction (rows; all sources, or ``which``) on its common scale."""
        which = range(len(self.sources)) if which is None else which
        return np.stack([(self.sources[i].gp.mean(x) - self._centre[i]) / self._spread[i] for i in which])

    def _log_likelihoods(self, tried_mu: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per source: how well its predictions order the study's results (pairwise probit likelihood, scaled
        so that n trials count about n comparisons); 0 before ``responses_from`` trials."""
        if len(y) < max(2, self.responses_from):
            return np.zeros(len(self.sources))
        upper = np.triu_indices(len(y), 1)
        sign = np.sign(y[:, None] - y[None, :])[upper]
        diff = (tried_mu[:, :, None] - tried_mu[:, None, :])[:, upper[0], upper[1]] * sign
        return np.log(np.maximum(ndtr(diff / math.sqrt(2.0)), 1e-12)).sum(1) * 2 / len(y)

    def weights(self, tried_mu: np.ndarray, y: np.ndarray) -> np.ndarray:
        """How much each source is believed to resemble the study: prior times response likelihood."""
        log_w = np.log(np.maximum(self.prior, 1e-300)) + self._log_likelihoods(tried_mu, y)
        w = np.exp(log_w - log_w.max())
        return w / w.sum()

    def related(self, tried_mu: np.ndarray, y: np.ndarray, *, after: int = 8, margin: float = 3.0) -> bool:
        """Whether the sources may still resemble the study: False only once ``after`` trials or more say
        strongly (a Bayes factor below exp(-``margin``)) that the sources, weighted by their prior, order the
        study's results worse than a coin would. Trials that are all good look alike to every source, and
        say little: so weak evidence never hands over."""
        if len(y) < max(2, self.responses_from, after):
            return True
        ties = np.sign(y[:, None] - y[None, :])[np.triu_indices(len(y), 1)] == 0
        chance = math.log(0.5) * float((~ties).sum()) * 2 / len(y)
        ll = self._log_likelihoods(tried_mu, y) - chance
        return float(np.log(np.sum(self.prior * np.exp(ll - ll.max()))) + ll.max()) > -margin

    def propose(self, tried: np.ndarray, y: np.ndarray, tried_mu: np.ndarray | None = None,
                pending: np.ndarray | None = None) -> tuple[np.ndarray, Proposal]:
        """The next config for a study that has tried ``tried`` (cube rows) with results ``y`` (higher is
        better), with ``pending`` rows proposed but not yet evaluated (a batch; other workers): as if each
        source had answered them as it predicts. ``tried_mu``: :meth:`predict` of ``tried``, if the caller
        keeps it."""
        y = np.asarray(y, dtype=float)
        mu = self.predict(tried) if tried_mu is None else tried_mu
        w = self.weights(mu, y)
        seen = np.hstack([mu, self.predict(pending)]) if pending is not None and len(pending) else mu
        candidates, origin = self.pool, self.pool_origin
        if seen.shape[1] == 0:  # nothing tried: the consensus of the sources
            score = w @ self.pool_mu
        else:
            floor = seen.max(1)
            score = w @ np.maximum(self.pool_mu - floor[:, None], 0) + 1e-3 * (w @ self.pool_mu)
            if len(y):  # and around the study's best trials, scored by the sources that weigh most
                best = tried[np.argsort(-y, kind="stable")[:3]]
                near = self.space.snap(
                    self.space.perturb(self.rng, best[self.rng.integers(len(best), size=self.local)], 0.06))
                top = np.argsort(-w)[:self.scored_sources]
                near_mu = self.predict(near, top)
                near_score = (w[top] @ np.maximum(near_mu - floor[top, None], 0) + 1e-3 * (w[top] @ near_mu))
                candidates = np.vstack([candidates, near])
                origin = np.concatenate([origin, ["near the study's best"] * len(near)])
                score = np.concatenate([score, near_score])
        own = len(y) / (len(y) + self.own_evidence)
        if len(y) >= 3:
            z = normal_scores(y)
            gp = GaussianProcess(tried, z, noises=(0.01, 0.1))
            mean, sd = gp.mean_sd(candidates)
            gap = (mean - z.max()) / sd
            improvement = sd * (gap * ndtr(gap) + np.exp(-0.5 * gap * gap) / math.sqrt(2 * math.pi))
            score = ((1 - own) * score / max(float(score.max()), 1e-12)
                     + own * improvement / max(float(improvement.max()), 1e-12))
        taken = np.vstack([tried, pending]) if pending is not None and len(pending) else tried
        if len(taken):  # never a config the study has tried or is trying: the next best instead (the candidates
            # are snapped to the configs they decode to, so equal configs are equal rows), unless all are taken
            fresh = _sq_distances(candidates, self.space.snap(taken)).min(1) >= 1e-12
            if fresh.any():
                score = np.where(fresh, score, -np.inf)
        chosen = int(np.argmax(score))
        row = candidates[chosen]
        # the evidence: the sources that back this config most (weight times where they place it among their runs)
        placed = ndtr(np.array([s.gp.mean(row[None, :])[0] for s in self.sources]))
        top = np.argsort(-(w * placed), kind="stable")[:5]
        evidence = [{"source": self.sources[i].name, "weight": round(float(w[i]), 4),
                     "distance": None if self.sources[i].distance is None else round(float(self.sources[i].distance), 4),
                     "runs": self.sources[i].runs, "percentile": round(float(placed[i]), 3)} for i in top]
        return row, Proposal(self.space.decode(row), evidence, round(own if len(y) >= 3 else 0.0, 4), str(origin[chosen]))
