"""The loop's parts on their own: the task contract, evaluation, randomness streams, the MER-PS
input statistics, the optimiser's schedule and clipping, and the metric writer's history."""
import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import cross as cross_config
from configs import ps as ps_config
from merjax import metrics, optim, sharding, tasks, train
from merjax.data import prepare
from merjax.models import physio
from merjax.tasks import cross as cross_task
from merjax.tasks import ps as ps_task


# ---------------------------------------------------------------- the task contract

@pytest.mark.parametrize("module", [ps_task, cross_task])
def test_every_task_satisfies_the_contract(module):
    assert tasks.check(module) is module
    assert tasks.load(module.__name__.rsplit(".", 1)[1]) is module
    # Each task names a builder module with the interface prepare.py uses.
    builder = prepare.builder_module(module)
    for name in ("Builder", "DEMO_NAME", "write_demo", "builder_config", "release_sources"):
        assert hasattr(builder, name), f"{builder.__name__} lacks {name}"


def test_contract_check_names_what_is_missing_or_misdeclared():
    broken = types.ModuleType("merjax.tasks.broken")
    for name in tasks.CONSTANTS:
        setattr(broken, name, None)
    for name in tasks.FUNCTIONS:
        setattr(broken, name, getattr(ps_task, name))
    del broken.SPLITS
    broken.loss = lambda model, batch: None
    with pytest.raises(TypeError, match=r"constant SPLITS missing; loss\(model, batch\) should "
                                        r"take \(model, batch, config, rngs\)"):
        tasks.check(broken)
    with pytest.raises(ValueError, match="config.task='nosuch' names no module"):
        tasks.load("nosuch")


# ---------------------------------------------------------------- evaluation

class _DoubleModel:
    """A stand-in ModelState whose eval step doubles `x`: evaluation is tested on its own."""

    def eval_step(self):
        return jax.jit(lambda state, batch: batch["x"] * 2 + state)


def test_evaluator_sees_every_example_once_in_split_order_on_a_mesh():
    config = ml_collections.ConfigDict(dict(eval_batch_size=8, sharding=dict(
        rules=(("batch", ("data", "fsdp")),))))
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=8, fsdp=1, model=1)))
    task = types.SimpleNamespace(ID_FIELD="sample_id", EVAL_FIELDS=("y",))
    source = [dict(sample_id=f"s{i:02d}".encode(), x=np.float32(i), y=np.int32(100 + i))
              for i in range(13)]  # 13 over batches of 8: the second batch is 3/8 padding

    def transform(example):
        return dict(x=np.float32(example["x"]), y=np.int32(example["y"]))

    evaluator = train.Evaluator(config, mesh, task, _DoubleModel(), transform)
    ids, outputs, kept = evaluator(jnp.float32(1), source)
    assert ids == [f"s{i:02d}" for i in range(13)]
    np.testing.assert_array_equal(outputs, np.arange(13) * 2 + 1)
    np.testing.assert_array_equal(kept["y"], 100 + np.arange(13))
    np.testing.assert_array_equal(kept["index"], np.arange(13))


# ---------------------------------------------------------------- randomness

def _first_kernel(config, fold_index):
    mesh = sharding.make_mesh(config.mesh)
    data = prepare.describe(config, ps_task)
    model_state = train.ModelState(config, mesh, ps_task, data, None, fold_index=fold_index)
    state = model_state.init()
    return np.asarray(state[0]["eeg_proj"]["kernel"][...]), model_state


def test_folds_get_their_own_init_dropout_and_data_streams():
    config = ps_config.get_config("runlocal")
    k0, s0 = _first_kernel(config, 0)
    k0_again, _ = _first_kernel(config, 0)
    k1, s1 = _first_kernel(config, 1)
    np.testing.assert_array_equal(k0, k0_again)  # same config, seed and fold: same numbers
    assert not np.allclose(k0, k1)
    assert s0.data_seed != s1.data_seed
    keys = [jax.random.key_data(k) for k in (s0.params_key, s0.dropout_key, s1.dropout_key)]
    assert len({tuple(np.asarray(k).ravel()) for k in keys}) == 3
    config.seed = 1
    k0_seed1, _ = _first_kernel(config, 0)
    assert not np.allclose(k0, k0_seed1)


# ---------------------------------------------------------------- MER-PS input statistics

def test_ps_input_stats_leave_out_padding_and_bad_channels():
    config = ps_config.get_config("runlocal")
    rng = np.random.default_rng(0)
    examples = []
    for i in range(4):
        eeg = rng.normal(0, 3.0, (64, 256)).astype(np.float32)
        ctx = np.array([i % 2 == 1, True])  # even examples start at second 0: padded context
        if not ctx[0]:
            eeg[:, :128] = 0.0
        fnirs = rng.normal(5.0, 2.0, (8, 3, 51)).astype(np.float32)
        if not ctx[0]:
            fnirs[:4] = 0.0
        mask = np.ones(51, bool)
        mask[10] = False
        fnirs[:, :, 10] = 1e6  # a bad channel's garbage must not leak into the statistics
        examples.append(dict(eeg=eeg, fnirs=fnirs, fnirs_mask=mask, context_mask=ctx))
    stats = ps_task.input_stats(examples, config)
    valid_eeg = np.concatenate([e["eeg"][:, 128 * (not e["context_mask"][0]):]
                                for e in examples], axis=1)
    np.testing.assert_allclose(stats["eeg_scale"], np.sqrt((valid_eeg ** 2).mean(axis=1)),
                               rtol=1e-5)
    valid_fnirs = np.concatenate([e["fnirs"][4 * (not e["context_mask"][0]):]
                                  for e in examples])
    np.testing.assert_allclose(stats["fnirs_mean"][:, :10], valid_fnirs.mean(0)[:, :10],
                               rtol=1e-5)
    np.testing.assert_allclose(stats["fnirs_std"][:, :10], valid_fnirs.std(0)[:, :10],
                               rtol=1e-4)
    # The band statistics standardise the train examples' valid EEG band powers.
    valid = [1 - (not e["context_mask"][0]) for e in examples]
    bands = np.concatenate([np.asarray(physio.band_log_power(
        e["eeg"][None], stats["eeg_scale"], 2, 128))[0, 1 - v:] for e, v in zip(examples, valid)])
    standardised = (bands - stats["band_mean"]) / stats["band_std"]
    np.testing.assert_allclose(standardised.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(standardised.std(0), 1, atol=1e-3)
    # Never seen valid: neutral statistics instead of the garbage.
    assert np.all(stats["fnirs_mean"][:, 10] == 0) and np.all(stats["fnirs_std"][:, 10] == 1)


def test_cross_input_stats_use_only_real_steps_of_present_inputs():
    config = cross_config.get_config("runlocal")
    rng = np.random.default_rng(0)
    examples, real = [], []
    for i in range(6):
        length = [0, 1, 2][i % 3]  # 0: the clip lacks this input (stored as zeros)
        frames = np.zeros((2, 3), np.float32)
        frames[:length] = rng.normal(4.0, 2.0, (length, 3))
        frames[length:] = 1e6 if length else 0.0  # padding must not leak in
        real.append(frames[:length])
        examples.append({f"{k}_length": np.int32(length) for k in ("audio", "text", "video")}
                        | {k: frames for k in ("audio", "text", "video")})
    stats = cross_task.input_stats(examples, config)
    values = np.concatenate(real)
    for k in ("audio", "text", "video"):
        np.testing.assert_allclose(stats[k][0], values.mean(0), rtol=1e-5)
        np.testing.assert_allclose(stats[k][1], values.std(0), rtol=1e-4)


# ---------------------------------------------------------------- optimiser

def _optim(**kw):
    c = ps_config.get_config("runlocal").optim
    c.update(kw)
    return c


def test_schedule_warms_up_then_decays_to_the_end_fraction():
    _, lr = optim.make(_optim(lr=1e-2, warmup_steps=10, schedule="cosine",
                              end_lr_fraction=0.1), total_steps=110)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-3)
    assert float(lr(10)) == pytest.approx(1e-2)
    assert float(lr(60)) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5), rel=1e-5)  # half-way
    assert float(lr(110)) == pytest.approx(1e-3, rel=1e-5)
    _, constant = optim.make(_optim(lr=1e-2, warmup_steps=0, schedule="constant"), 100)
    assert float(constant(0)) == float(constant(99)) == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="schedule must be 'cosine' or 'constant'"):
        optim.make(_optim(schedule="linear"), 100)


def test_global_norm_clipping_acts_before_adam():
    params = {"w": jnp.zeros(4)}
    grads = [{"w": jnp.array([30.0, -40.0, 0.0, 0.0])},  # norm 50
             {"w": jnp.array([0.1, 0.2, -0.1, 0.0])}]  # norm < 1: untouched

    def updates(tx, gs):
        state, out = tx.init(params), []
        for g in gs:
            u, state = tx.update(g, state, params)
            out.append(u["w"])
        return np.asarray(out)

    clipped_tx, _ = optim.make(_optim(grad_clip_norm=1.0, warmup_steps=0, weight_decay=0.0), 10)
    plain_tx, _ = optim.make(_optim(grad_clip_norm=0.0, warmup_steps=0, weight_decay=0.0), 10)
    pre_clipped = [jax.tree.map(lambda x: x * min(1.0, 1.0 / float(optax.tree.norm(g))), g)
                   for g in grads]
    np.testing.assert_allclose(updates(clipped_tx, grads), updates(plain_tx, pre_clipped),
                               rtol=1e-6)
    assert not np.allclose(updates(clipped_tx, grads), updates(plain_tx, grads))


# ---------------------------------------------------------------- metric history

def test_metric_writer_keeps_one_row_per_step_and_fold_after_a_restart(tmp_path):
    writer = metrics.MetricWriter(str(tmp_path))
    writer.start(0, fold=0)
    for step in (5, 10, 15):
        writer.write(step, {"train/loss": float(step)}, fold=0)
    writer.start(0, fold=1)
    writer.write(5, {"train/loss": 1.0}, fold=1)
    writer.write_summary(20, {"cv/waf": 0.5})
    writer.close()

    writer = metrics.MetricWriter(str(tmp_path))  # resumed from fold 0's step-10 checkpoint
    writer.start(10, fold=0)
    writer.write(15, {"train/loss": 99.0}, fold=0)
    writer.write_summary(20, {"cv/waf": 0.7})
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r.get("fold"), r["step"]) for r in rows if "train/loss" in r] == [
        (0, 5), (0, 10), (1, 5), (0, 15)]
    assert [r for r in rows if "fold" not in r] == [{"step": 20, "cv/waf": 0.7}]
    # One TensorBoard run per fold; the cross-fold summary in the top folder.
    names = {p.name for p in (tmp_path / "tensorboard").iterdir()}
    assert {"fold_0", "fold_1"} <= names and any(n.startswith("events.") for n in names)
    assert not metrics.MetricWriter(str(tmp_path / "off"), enabled=False).enabled
