"""The linear reference read-outs (merjax/reference.py): the fitters solve their objectives,
the penalty is chosen on the selection split, and the loop runs a reference as the model and
warns when a model does not beat it."""
import logging
import os

import numpy as np
import pytest

from configs import cross as cross_config
from configs import ps as ps_config
from launch import scale
from merjax import reference, train
from merjax.tasks import common
from merjax.tasks import ps as ps_task


def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    return rng, (z - z.mean(0)) / z.std(0)


@pytest.mark.parametrize("l2", [1e-3, 0.5])
def test_ridge_solves_the_penalised_least_squares(l2):
    rng, z = _data(80, 12)
    y = z @ rng.normal(size=(12, 2)) + rng.normal(size=(80, 2)) + 3.0
    (w, b), = reference._ridge(z, y, (l2,))
    # Normal equations of mean ||zW + b - y||^2 + l2 ||W||^2 (z is centred, so b = mean y).
    expected = np.linalg.solve(z.T @ z / 80 + l2 * np.eye(12), z.T @ (y - y.mean(0)) / 80)
    np.testing.assert_allclose(w, expected, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b, y.mean(0))


def test_logistic_reaches_the_penalised_optimum():
    rng, z = _data(300, 6, seed=1)
    y = (z @ rng.normal(size=(6, 3)) + rng.gumbel(size=(300, 3))).argmax(1)
    l2 = 0.05
    (w, b), = reference._logistic(z, y, 3, (l2,), iterations=300)
    logits = z @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = p - np.eye(3)[y]
    grad_w = z.T @ residual / len(z) + l2 * w
    grad_b = residual.mean(0)
    assert np.abs(grad_w).max() < 1e-4 and np.abs(grad_b).max() < 1e-4


def _identity_readout(kind="ridge"):
    return reference.Readout(
        name="ridge", kind=kind, features=lambda batch: batch["x"], num_outputs=1,
        target=lambda rows: rows["y"][:, None], output=lambda scores, rows: scores[:, 0])


def _source(x, y):
    return [{"x": xi, "y": yi, "name": f"n{i}".encode()} for i, (xi, yi) in
            enumerate(zip(x, y))]


def test_fit_chooses_the_penalty_on_the_selection_split():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 40))
    y = x[:, 0] + 2.0 * rng.normal(size=60)  # one useful feature among 40: penalties matter
    xs = rng.normal(size=(200, 40))
    ys = xs[:, 0] + 2.0 * rng.normal(size=200)
    train_src, select_src = _source(x, y), _source(xs, ys)
    grid = (1e-4, 1e-2, 1.0, 100.0)

    def mse(outputs, rows):
        return float(np.mean((outputs - rows["y"]) ** 2))

    fitted = reference.fit(_identity_readout(), train_src, select_src, lambda e: e,
                           fields=("y",), id_field="name", l2_grid=grid, score=mse,
                           higher_is_better=False)
    errors = []
    for l2 in grid:  # each penalty by hand: standardise on train, solve, score on select
        mean, std = x.mean(0), x.std(0)
        (w, b), = reference._ridge((x - mean) / std, y[:, None], (l2,))
        errors.append(mse((((xs - mean) / std) @ w + b)[:, 0], {"y": ys}))
    assert fitted.l2 == grid[int(np.argmin(errors))]
    ids, outputs, rows = fitted.outputs(select_src)
    assert ids[:2] == ["n0", "n1"] and mse(outputs, rows) == pytest.approx(min(errors))


def _ps_config(tmp_path):
    c = ps_config.get_config("runlocal")
    c.data.tfds_dir = str(tmp_path / "tfds")
    return c


def test_ridge_as_the_model_writes_its_predictions_and_refuses_export(tmp_path):
    config = _ps_config(tmp_path)
    config.model.name = "ridge"
    workdir = str(tmp_path / "run")
    scores = train.run(config, workdir)
    assert {"val/mae", "val/prior_mae", "inner/mae"} <= set(scores)
    # Its scores as a sweep reads them (launch/scale.py), written once the run ended.
    assert scale.final_score(scale.read_metrics(workdir), ps_task.SELECT) == (
        "val/mae", pytest.approx(scores["val/mae"]))
    assert scores["val/mae"] == train.run(config, workdir, mode="evaluate")["val/mae"]
    with open(os.path.join(workdir, "predictions.csv")) as f:
        header, *rows = f.read().splitlines()
    assert header == "sample_id,valence,arousal" and len(rows) > 0
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    with pytest.raises(ValueError, match="reference read-out"):
        train.run(config, workdir, mode="export")


def test_logistic_as_the_model_answers_every_candidate(tmp_path):
    config = cross_config.get_config("runlocal")
    config.data.tfds_dir = str(tmp_path / "tfds")
    config.model.name = "logistic"
    scores = train.run(config, str(tmp_path / "run"))
    assert set(scores) == {"cv/waf", "cv/acc"} and 0 <= scores["cv/waf"] <= 1
    with open(tmp_path / "run" / "answer.csv") as f:
        lines = f.read().splitlines()
    assert lines[0] == "name,discrete" and len(lines) > 1


def test_a_model_below_its_reference_is_reported_loudly(caplog):
    class Task:
        SELECT = ("mae", "min")

    fold = common.Fold(None, None, [], [], None, select=[1])
    with caplog.at_level(logging.WARNING):
        train.check_beats_reference(Task, fold, {"inner/mae": 10.0, "inner/ref_mae": 12.0})
        assert "DOES NOT BEAT" not in caplog.text
        train.check_beats_reference(Task, fold, {"inner/mae": 12.5, "inner/ref_mae": 12.0})
    assert "DOES NOT BEAT ITS LINEAR REFERENCE" in caplog.text
    assert "inner/mae=12.5 vs inner/ref_mae=12" in caplog.text
