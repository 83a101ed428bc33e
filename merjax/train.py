"""The one train / evaluate / predict loop for every track. Read it top to bottom.

`run` sets up the task, mesh and data, then runs each of the task's folds (one fold without
cross-validation) through `run_fold`: abstract state and shardings -> init or restore -> jitted
steps -> train loop with logging, evaluation, model selection and checkpoints -> predictions.
Finally the task turns the folds' predictions into its submission. A track changes nothing here:
its module in merjax/tasks/ supplies data, folds, model, loss, metrics and submission.
"""
import dataclasses
import importlib
import os
import time

import jax
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from merjax import checkpoint, export, metrics, optim, sharding
from merjax.data import pipeline

MODES = ("train", "evaluate", "predict", "export")


@dataclasses.dataclass
class FoldResult:
    name: str | None
    step: int
    scores: dict  # validation scores of the selected (best or last) state
    ids: list | None = None  # predicted examples' ids, in split order
    outputs: np.ndarray | None = None  # the task's raw outputs for them
    kept: dict | None = None  # the task's EVAL_FIELDS for them


def run(config, workdir, mode="train"):
    """Runs `mode` for `config` in `workdir`; returns the task's summary scores."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}; found {mode!r}")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)

    task = importlib.import_module(f"merjax.tasks.{config.task}")
    mesh = sharding.make_mesh(config.mesh)
    shards = sharding.batch_shards(mesh, config)
    for key in ("batch_size", "eval_batch_size"):
        if config[key] % (shards * jax.process_count()):
            raise ValueError(f"config.{key}={config[key]} must divide by the {shards} batch shards "
                             f"of mesh {dict(mesh.shape)} and by {jax.process_count()} processes")
    logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape),
                 jax.device_count(), jax.process_count())

    data = task.prepare(config, workdir)
    writer = metrics.MetricWriter(workdir)
    try:
        results = [run_fold(config, workdir, mode, task, mesh, data, fold, writer)
                   for fold in task.folds(config, data)]
        if mode == "export":
            return {}
        summary = task.summarize(results)
        if mode == "train" or mode == "predict":
            task.write_outputs(workdir, results, config)
        if len(results) > 1:
            writer.write(config.total_steps, summary)
        return summary
    finally:
        writer.close()


def run_fold(config, workdir, mode, task, mesh, data, fold, writer):
    """Trains (or evaluates / predicts with / exports) one fold; returns its FoldResult."""
    fold_dir = workdir if fold.name is None else os.path.join(workdir, fold.name)
    ckpt = checkpoint.Checkpointer(fold_dir, keep=config.keep_checkpoints)
    # The state with the best validation score, when the task selects one (task.SELECT).
    best = checkpoint.Checkpointer(fold_dir, keep=1, subdir="best") if task.SELECT else None
    try:
        return _run_fold(config, mode, task, mesh, data, fold, writer, fold_dir, ckpt, best)
    finally:  # also on errors: an async save in flight completes, the last good one stays
        ckpt.close()
        if best is not None:
            best.close()


def _run_fold(config, mode, task, mesh, data, fold, writer, fold_dir, ckpt, best):
    tags = {} if fold.name is None else {"fold": fold.index}
    logging.info("%s: %d train / %d validation examples (%s release)", fold.name or "data",
                 len(fold.train), len(fold.validation), data.release)

    # ------------------------------------------------------------------ abstract state
    latest = ckpt.latest_step()
    if mode != "train" and latest is None:
        raise FileNotFoundError(f"--mode={mode} needs a checkpoint; none in {ckpt.directory}")
    # Statistics come from the data only for a fresh model; a restore brings its own.
    stats = task.input_stats(fold.train, config) if latest is None else None
    model_state = ModelState(config, mesh, task, data, stats)

    # ------------------------------------------------------------------ init or restore
    transform = task.make_transform(config, data)
    train_iter = None
    if mode == "train":
        train_iter = pipeline.train_iterator(
            fold.train, transform, global_batch_size=config.batch_size,
            seed=config.seed + 7919 * (fold.index or 0))
    if latest is None:
        state, step = model_state.init(), 0
    else:
        state, meta = ckpt.restore(latest, model_state.restore_target(), train_iter)
        _check_release(meta, data, ckpt)
        step = int(meta["step"])
        logging.info("restored step %d from %s", step, ckpt.directory)

    train_step = model_state.train_step()
    eval_step = model_state.eval_step()

    # ------------------------------------------------------------------ evaluation
    def evaluate(state, source):
        """Every example once; returns (ids, outputs, kept fields) in split order."""
        local_ids, parts = {}, []
        for local, batch_ids in pipeline.eval_batches(
                source, transform, global_batch_size=config.eval_batch_size,
                id_field=task.ID_FIELD):
            local_ids.update(zip(local["index"][:len(batch_ids)].tolist(), batch_ids))
            batch = sharding.to_global(local, mesh, config)
            out = eval_step(state, batch)
            keep = {k: batch[k] for k in ("mask", "index") + task.EVAL_FIELDS}
            parts.append(multihost_utils.process_allgather(dict(out=out, **keep), tiled=True))
        gathered = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        valid = gathered.pop("mask").astype(bool)
        rows = {k: v[valid] for k, v in gathered.items()}
        order = np.argsort(rows["index"], kind="stable")
        rows = {k: v[order] for k, v in rows.items()}
        if len(rows["index"]) != len(source) or np.any(rows["index"] != np.arange(len(source))):
            raise RuntimeError(f"Evaluation saw {len(rows['index'])} of {len(source)} examples")
        ids = [local_ids[i] if i in local_ids else pipeline.decode_id(source[i], task.ID_FIELD)
               for i in rows["index"]]
        return ids, rows.pop("out"), rows

    def run_eval(state, step):
        ids, outputs, kept = evaluate(state, fold.validation)
        scores = task.eval_metrics(outputs, kept)
        writer.write(step, scores, **tags)
        logging.info("eval%s @ step %d: %s", f" {fold.name}" if fold.name else "", step,
                     ", ".join(f"{k}={v:.4g}" for k, v in sorted(scores.items())))
        return scores, (ids, outputs, kept)

    def predict(state, step, scores, cached=None):
        """The fold's result: the predict split's outputs from `state` (None: evaluate only)."""
        if fold.predict is None:
            return FoldResult(fold.name, step, scores)
        ids, outputs, kept = cached if cached and fold.predict is fold.validation else \
            evaluate(state, fold.predict)
        return FoldResult(fold.name, step, scores, ids, outputs, kept)

    def selected(state, step, scores, cached):
        """The best state if the task selects one, else the given (last) state."""
        if best is None or best.latest_step() is None or best.latest_step() == step:
            return state, step, scores, cached
        best_step = best.latest_step()
        best_state, meta = best.restore(best_step, model_state.restore_target())
        logging.info("%s: predicting with the best state, step %d (%s=%.4g)", fold.name or "run",
                     best_step, task.SELECT[0], meta["scores"][task.SELECT[0]])
        return best_state, best_step, meta["scores"], None

    if mode == "export":
        state, step, scores, _ = selected(state, step, {}, None)
        export.export(os.path.join(fold_dir, "export"), task=task, graphdef=model_state.graphdef,
                      state=state, example=transform(fold.validation[0]),
                      input_names=task.model_inputs(config, data),
                      meta=dict(task=config.task, step=step, release=data.release,
                                fold=fold.name, **task.export_metadata(data)))
        return FoldResult(fold.name, step, scores)

    if mode != "train":
        if mode == "predict":
            state, step, _, _ = selected(state, step, {}, None)
        scores, cached = run_eval(state, step)
        if mode == "predict":
            return predict(state, step, scores, cached)
        return FoldResult(fold.name, step, scores)

    # ------------------------------------------------------------------ train loop
    logging.info("training %d parameters from step %d to %d", model_state.num_params, step,
                 config.total_steps)
    pending = []  # (step, device scalars) not yet fetched
    window_start, window_step, scores, cached = time.time(), step, {}, None
    best_value = None
    if best is not None and best.latest_step() is not None:
        best_value = best.meta(best.latest_step())["scores"][task.SELECT[0]]

    def flush():
        """Fetches pending scalars, stops on a non-finite loss, logs the window's means."""
        nonlocal window_start, window_step
        if not pending:
            return
        fetched = jax.device_get(pending)
        for s, m in fetched:
            if not np.isfinite(m["loss"]):
                raise FloatingPointError(
                    f"Non-finite loss {m['loss']} at step {s}; stopping. The last good checkpoint "
                    f"is step {ckpt.latest_step()} in {ckpt.directory}; rerunning resumes from it "
                    f"(lower config.optim.lr or check the data).")
        means = {f"train/{k}": float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}
        last = fetched[-1][0]
        rate = (last - window_step) / max(time.time() - window_start, 1e-9)
        writer.write(last, {**means, "train/steps_per_s": rate}, **tags)
        eta = (config.total_steps - last) / max(rate, 1e-9)
        logging.info("%sstep %d/%d  loss %.5f  %.2f steps/s  ETA %dm%02ds",
                     f"{fold.name} " if fold.name else "", last, config.total_steps,
                     means["train/loss"], rate, eta // 60, eta % 60)
        pending.clear()
        window_start, window_step = time.time(), last

    compiled = None
    while step < config.total_steps:
        batch = sharding.to_global(next(train_iter), mesh, config)
        if compiled is None:
            compiled = train_step.lower(state, batch).compile()
            logging.info("compiled train step; memory analysis: %s", compiled.memory_analysis())
            window_start = time.time()  # steps/s should not include compilation
        state, step_metrics = compiled(state, batch)
        step += 1
        pending.append((step, step_metrics))
        if step % config.log_every == 0 or step == config.total_steps:
            flush()
        if step % config.eval_every == 0 or step == config.total_steps:
            flush()  # never select or keep a state whose loss went non-finite
            scores, cached = run_eval(state, step)
            if best is not None and _improves(scores[task.SELECT[0]], best_value, task.SELECT[1]):
                best_value = scores[task.SELECT[0]]
                best.save(step, state, None, dict(step=step, release=data.release, scores=scores))
        if step % config.checkpoint_every == 0 or step == config.total_steps:
            flush()  # never checkpoint a state whose loss went non-finite
            ckpt.save(step, state, train_iter, dict(step=step, release=data.release))

    if not scores:  # already at total_steps when started: evaluate what was restored
        scores, cached = run_eval(state, step)
    return predict(*selected(state, step, scores, cached))


def _improves(value, best_value, direction):
    if best_value is None:
        return True
    return value > best_value if direction == "max" else value < best_value


def _check_release(meta, data, ckpt):
    if meta.get("release") != data.release:
        raise ValueError(f"Checkpoint in {ckpt.directory} was trained on the "
                         f"{meta.get('release')} release; this run uses the {data.release} "
                         f"release. Use another --workdir.")


class ModelState:
    """The model + optimizer as one sharded nnx.State: abstract shapes, init, restore target, and
    the jitted train and eval steps over it. The benchmark builds the same object."""

    def __init__(self, config, mesh, task, data, stats):
        self.config, self.mesh, self.task = config, mesh, task
        self.tx, self.lr_schedule = optim.make(config.optim, config.total_steps)

        def build():
            model = task.build_model(config, data, stats, nnx.Rngs(params=config.seed))
            return model, nnx.Optimizer(model, self.tx, wrt=nnx.Param)

        self._build = build
        with sharding.context(mesh, config):
            abstract = nnx.eval_shape(build)
            self.graphdef, self.abstract = nnx.split(abstract)
            self.shardings = nnx.get_named_sharding(self.abstract, mesh)
        self.num_params = sharding.log_parameters(
            nnx.state(abstract[0], nnx.Param), self.shardings[0])

    def init(self):
        """Parameters are created already sharded (jit with out_shardings), never on one host."""
        with sharding.context(self.mesh, self.config):
            return jax.jit(lambda: nnx.split(self._build())[1], out_shardings=self.shardings)()

    def restore_target(self):
        return checkpoint.abstract_like(self.abstract, self.shardings)

    def train_step(self):
        config, task, graphdef, lr_schedule = self.config, self.task, self.graphdef, self.lr_schedule
        base_key = jax.random.key(config.seed)

        def step(state, batch):
            model, opt = nnx.merge(graphdef, state)
            opt_step = opt.step[...]
            # Randomness is a function of (seed, step) only, so a resumed run repeats it exactly.
            key = jax.random.fold_in(base_key, opt_step)
            # The Rngs are made inside the differentiated function: NNX forbids mutating RNG
            # counters created outside the grad trace.
            (loss, aux), grads = nnx.value_and_grad(
                lambda m: task.loss(m, batch, config, nnx.Rngs(dropout=key)), has_aux=True)(model)
            opt.update(model, grads)
            scalars = dict(loss=loss, grad_norm=optax.tree.norm(grads), lr=lr_schedule(opt_step))
            return nnx.state((model, opt)), {**scalars, **aux}

        return jax.jit(step, out_shardings=(self.shardings, sharding.replicated(self.mesh)),
                       donate_argnums=0)

    def eval_step(self):
        graphdef, task = self.graphdef, self.task

        def step(state, batch):
            model, _ = nnx.merge(graphdef, state)
            return task.predict(model, batch)

        return jax.jit(step)
