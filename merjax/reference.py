"""Linear reference read-outs: the floor every deep model must clear, fitted in seconds.

A task describes its reference with a `Readout` (which features, which target, how read-out
scores become the task's outputs); this module fits it the same way for every track:
features standardised with train statistics, then
  ridge:    closed-form least squares with an L2 penalty (one eigendecomposition serves the
            whole penalty grid), or
  logistic: multinomial logistic regression with an L2 penalty, by full-batch L-BFGS;
  sigmoid:  one logistic regression per label of a multi-label target (same solver).
The penalty is chosen from `config.reference.l2` on the fold's selection split by the task's own
selection metric, the same split and metric that pick the deep model's state, so neither side
sees data the other does not.

`config.model.name == readout.name` makes the reference the run's model (train, evaluate and
predict refit it: it is deterministic and takes seconds); otherwise the loop fits it beside the
deep model and its outputs reach `task.eval_metrics` as `kept["reference"]`.
"""
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from merjax.data import pipeline


@dataclasses.dataclass(frozen=True)
class Readout:
    name: str  # the config.model.name that makes it the run's model
    kind: str  # "ridge", "logistic" (classes) or "sigmoid" (multi-label)
    features: Callable  # batch of transformed examples -> [B, D] float features
    target: Callable  # rows (the task's EVAL_FIELDS, stacked) -> [N, K] values (ridge),
    #                   [N] classes (logistic) or [N, K] 0/1 labels (sigmoid)
    output: Callable  # (read-out scores [N, K], rows) -> the task's predict() outputs
    num_outputs: int  # K: regression targets or classes


class Fitted:
    """A fitted read-out. `outputs(source)` gives (ids, the task's outputs, rows of `fields`)
    for every example of a split, in its order, like the loop's Evaluator."""

    def __init__(self, readout, transform, fields, id_field, mean, std, weights, bias, l2,
                 chunk, cache=None):
        self.readout, self.transform, self.fields = readout, transform, fields
        self.id_field, self.chunk, self._outputs = id_field, chunk, {}
        self.cache = cache
        self.mean, self.std, self.weights, self.bias, self.l2 = mean, std, weights, bias, l2

    def outputs(self, source):
        key = id(source)  # the source is held in _outputs, so its id is never reused
        if key not in self._outputs:
            ids, x, rows = read(self.readout, source, self.transform, self.fields,
                                self.id_field, self.chunk, self.cache)
            self._outputs[key] = (source, ids, self._apply(x, rows), rows)
        return self._outputs[key][1:]

    def _apply(self, x, rows):
        scores = ((x - self.mean) / self.std) @ self.weights + self.bias
        return np.asarray(self.readout.output(scores, rows))


def read(readout, source, transform, fields, id_field, chunk=256, cache=None):
    """(ids, [N, D] float64 features, {field: [N, ...]}) for every example of `source`; read
    from `cache` (a pipeline.TransformCache keeping `id_field`) when it holds the split."""
    ids, feats, rows = [], [], {k: [] for k in fields}
    cached = None if cache is None else cache.get(source, transform, id_field)
    for lo in range(0, len(source), chunk):
        batch, chunk_ids = pipeline.read_examples(
            source, np.arange(lo, min(lo + chunk, len(source))), transform, id_field, cached)
        ids += chunk_ids
        feats.append(np.asarray(readout.features(batch), np.float64))
        for k in fields:
            rows[k].append(batch[k])
    if not feats:
        raise ValueError("the reference read-out needs a non-empty split")
    return ids, np.concatenate(feats), {k: np.concatenate(v) for k, v in rows.items()}


def fit(readout, train, select, transform, *, fields, id_field, l2_grid, score,
        higher_is_better, iterations=300, chunk=256, cache=None):
    """Fits `readout` on `train`, choosing the L2 penalty on `select` by `score(outputs, rows)`.

    `fields` are the transformed fields kept per example (targets, what `output` needs);
    `cache`: the run's pipeline.TransformCache, read here and by the `Fitted`'s outputs
    for the splits it holds. Returns a `Fitted`.
    """
    _, x, rows = read(readout, train, transform, fields, id_field, chunk, cache)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-8, std, 1.0)  # a constant feature stays 0 after centring
    z = (x - mean) / std
    target = np.asarray(readout.target(rows))
    if readout.kind == "ridge":
        solutions = _ridge(z, target.astype(np.float64), l2_grid)
    elif readout.kind in ("logistic", "sigmoid"):
        solutions = _logistic(z, target, readout.num_outputs, l2_grid, iterations,
                              multilabel=readout.kind == "sigmoid")
    else:
        raise ValueError(f"reference kind must be 'ridge', 'logistic' or 'sigmoid'; found "
                         f"{readout.kind!r}")
    ids_s, xs, rows_s = read(readout, select, transform, fields, id_field, chunk, cache)
    best = None
    for l2, (w, b) in zip(l2_grid, solutions):
        candidate = Fitted(readout, transform, fields, id_field, mean, std, w, b, l2, chunk,
                           cache)
        outputs = candidate._apply(xs, rows_s)
        value = score(outputs, rows_s)
        logging.info("reference %s: l2=%g gives %.4g on the selection split", readout.name, l2,
                     value)
        if best is None or (value > best[0] if higher_is_better else value < best[0]):
            best = (value, candidate)
            candidate._outputs[id(select)] = (select, ids_s, outputs, rows_s)
    chosen = best[1]
    logging.info("reference %s (%s on %d features, %d train examples): l2=%g", readout.name,
                 readout.kind, x.shape[1], len(x), chosen.l2)
    return chosen


def _ridge(z, y, l2_grid):
    """[(W [D, K], b [K])] for each penalty: argmin mean ||zW + b - y||^2 + l2 ||W||^2."""
    n = len(z)
    b = y.mean(0)
    evals, evecs = np.linalg.eigh(z.T @ z / n)
    proj = evecs.T @ (z.T @ (y - b) / n)
    return [(evecs @ (proj / (evals + l2)[:, None]), b) for l2 in l2_grid]


def _logistic(z, y, classes, l2_grid, iterations, multilabel=False):
    """[(W [D, C], b [C])] for each penalty, from the strongest penalty down, each warm-started
    from the previous solution: mean cross-entropy (softmax over classes, or per label with
    `multilabel`, summed over labels) + l2/2 ||W||^2 by L-BFGS (float32, jitted once per
    shape and reused across penalties and folds)."""
    zj = jnp.asarray(z, jnp.float32)
    yj = jnp.asarray(y, jnp.float32 if multilabel else jnp.int32)
    params = {"w": jnp.zeros((z.shape[1], classes), jnp.float32),
              "b": jnp.zeros((classes,), jnp.float32)}
    solutions = {}
    for l2 in sorted(l2_grid, reverse=True):
        params = _solve(params, zj, yj, jnp.float32(l2), iterations=iterations,
                        multilabel=multilabel)
        solutions[l2] = (np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64))
    return [solutions[l2] for l2 in l2_grid]


def _objective(params, z, y, l2, multilabel):
    logits = z @ params["w"] + params["b"]
    if multilabel:
        ce = optax.sigmoid_binary_cross_entropy(logits, y).sum(-1).mean()
    else:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("iterations", "multilabel"))
def _solve(params, z, y, l2, *, iterations, multilabel):
    opt = optax.lbfgs()

    def value_fn(p):
        return _objective(p, z, y, l2, multilabel)

    value_and_grad = optax.value_and_grad_from_state(value_fn)

    def step(_, carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                    value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    return jax.lax.fori_loop(0, iterations, step, (params, opt.init(params)))[0]
