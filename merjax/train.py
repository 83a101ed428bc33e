"""The one train / evaluate / predict / export loop for every track. Read it top to bottom.

`run`: task, mesh and data, then each of the task's folds (one without cross-validation) through
`run_fold`, then the task's summary and submission. `run_fold` dispatches the modes in one
place: train (`train_fold`) or restore, then the selected state (the best one where the task
selects, else the last), then export, evaluate or predict with it. A track changes nothing here:
its module in merjax/tasks/ (contract in merjax/tasks/__init__.py) supplies the rest.
"""
import dataclasses
import functools
import json
import os
import signal
import threading
import time

import jax
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from merjax import checkpoint, costs, export, metrics, optim, reference, sharding, tasks
from merjax.data import on_device, pipeline, prepare

MODES = ("train", "evaluate", "predict", "export")
SELECT_PREFIX = "inner/"  # scores on a fold's own selection split (Fold.select)
# A run without folds (a trained model or the reference read-out as the model) writes its kept
# state's scores once more when it ends, so prefixed: the score a sweep reports for it
# (launch/scale.py), never re-derived from its evaluations.
SELECTED_PREFIX = "selected/"


@dataclasses.dataclass
class FoldResult:
    name: str | None
    step: int
    scores: dict  # validation scores of the selected (best or last) state
    ids: list | None = None  # predicted examples' ids, in split order
    outputs: np.ndarray | None = None  # the task's raw outputs for them
    kept: dict | None = None  # the task's EVAL_FIELDS for them


class Stopped(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint of `step` was saved before this was raised."""

    def __init__(self, step, signum):
        super().__init__(f"stopped at step {step}; rerun the same command to resume")
        self.step, self.signum = step, signum


def run(config, workdir, mode="train"):
    """Runs `mode` for `config` in `workdir`; returns the task's summary scores."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}; found {mode!r}")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    task = tasks.load(config.task)
    mesh = sharding.make_mesh(config.mesh)
    check_batch_sizes(config, mesh)
    logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape),
                 jax.device_count(), jax.process_count())

    data = prepare.prepare(config, task, announce=mode == "train")
    # The run's transformed splits: every fold's training, evaluation and reference read them,
    # each split transformed once (a fold's Subsets of a split read one transformed copy).
    cache = pipeline.TransformCache(config.pipeline.cache_bytes, task.ID_FIELD, names=data.splits)
    # Only training adds to the run's history; the other modes report and write their files.
    writer = metrics.MetricWriter(workdir, enabled=mode == "train")
    try:
        report = task.data_report(data)
        logging.info("data: %s", ", ".join(f"{k}={v:g}" for k, v in sorted(report.items())))
        writer.write_summary(0, report)
        if mode == "predict" and config.data.get("candidates"):
            return predict_candidates(config, workdir, task, mesh, data, writer, cache)
        results = [run_fold(config, workdir, mode, task, mesh, data, fold, writer, cache)
                   for fold in task.folds(config, data)]
        if mode == "export":
            return {}
        summary = task.summarize(results)
        if mode in ("train", "predict"):
            task.write_outputs(workdir, results, config, data)
        if len(results) > 1:
            writer.write_summary(config.total_steps, summary)
        else:  # (the writer writes only when training)
            writer.write_summary(results[0].step, {SELECTED_PREFIX + k: v
                                                   for k, v in results[0].scores.items()})
        if mode == "evaluate" and jax.process_index() == 0:
            with open(os.path.join(workdir, "evaluate.json"), "w") as f:
                json.dump(dict(summary, folds=[dict(r.scores, step=r.step, fold=r.name)
                                               for r in results]), f, indent=1)
        logging.info("%s %s: %s", config.task, mode,
                     ", ".join(f"{k}={v:.4g}" for k, v in sorted(summary.items())))
        return summary
    finally:
        writer.close()


def predict_candidates(config, workdir, task, mesh, data, writer, cache):
    """--mode=predict with `config.data.candidates`: the selected states answer another
    candidate file (e.g. MER-Prefer's stage-2 candidates) without retraining or rebuilding the
    dataset. Each fold's state is exported, then merjax.predict reads the file's clips with the
    builder's code and writes <workdir>/candidates/<file name>/answer.csv and answer.zip."""
    from merjax import predict  # the serving path: exports and the builder's reading code
    for fold in task.folds(config, data):
        run_fold(config, workdir, "export", task, mesh, data, fold, writer, cache)
    csv_path = os.path.abspath(config.data.candidates)
    out = os.path.join(workdir, "candidates", os.path.splitext(os.path.basename(csv_path))[0])
    if jax.process_index() == 0:
        path = predict.predict(workdir, data.info.metadata["manual_dir"], out,
                               batch_size=int(config.eval_batch_size), candidates=csv_path)
        logging.info("%s predict: answered %s in %s", config.task, csv_path, path)
    return {}


def check_batch_sizes(config, mesh):
    """Global batches split over the batch shards (which count every device of every process)
    and over the processes (each feeds its own slice)."""
    shards = sharding.batch_shards(mesh, config)
    for key in ("batch_size", "eval_batch_size"):
        for parts, what in ((shards, f"{shards} batch shards of mesh {dict(mesh.shape)}"),
                            (jax.process_count(), f"{jax.process_count()} processes")):
            if config[key] % parts:
                raise ValueError(f"config.{key}={config[key]} must divide by the {what}")
    # Each micro-batch of gradient accumulation splits over the same shards.
    accum = config.optim.accum_steps
    if not isinstance(accum, int) or accum < 1:
        raise ValueError(f"config.optim.accum_steps must be an integer >= 1; found {accum!r}")
    if config.batch_size % (accum * shards):
        raise ValueError(f"config.batch_size={config.batch_size} must divide by "
                         f"config.optim.accum_steps={accum} x the {shards} batch shards of mesh "
                         f"{dict(mesh.shape)}: each micro-batch is split over every shard")


def run_fold(config, workdir, mode, task, mesh, data, fold, writer, cache):
    """Trains (or restores), selects, then exports, evaluates or predicts; one FoldResult.

    The task's linear reference is fitted first (train and evaluate; seconds) so its scores
    sit beside the model's; with `config.model.name` naming it, it is the fold's model.
    """
    fold_dir = workdir if fold.name is None else os.path.join(workdir, fold.name)
    logging.info("%s: %d train / %d validation examples (%s release)",
                 fold.name or "data", len(fold.train), len(fold.validation), data.release)
    transform = task.make_transform(config, data)
    readout = task.reference(config, data)
    if config.model.name == readout.name:
        return reference_fold(config, mode, task, data, fold, writer, readout, transform, cache)
    fitted = (fit_reference(config, task, data, fold, readout, transform, cache)
              if mode in ("train", "evaluate") else None)
    ckpt = checkpoint.Checkpointer(fold_dir, keep=config.keep_checkpoints)
    # The state with the best selection score, when the task selects one (task.SELECT).
    best = checkpoint.Checkpointer(fold_dir, keep=1, subdir="best") if task.SELECT else None
    try:
        latest = ckpt.latest_step()
        if mode != "train" and latest is None:
            raise FileNotFoundError(f"--mode={mode} needs a checkpoint; none in {ckpt.directory}."
                                    f" Train first with --mode=train and the same --workdir")
        # Statistics come from the data only for a fresh model; a restore brings its own.
        stats = task.input_stats(fold.train, config) if latest is None else None
        model_state = ModelState(config, mesh, task, data, stats, fold_index=fold.index)
        evaluator = Evaluator(config, mesh, task, model_state, transform, fitted, cache)
        scores = cached = None
        if mode == "train":
            state, step, scores, cached = train_fold(
                config, task, data, fold, model_state, evaluator, ckpt, best, writer)
        else:
            state, meta = ckpt.restore(latest, model_state.restore_target())
            check_release(meta, data, ckpt)
            step = int(meta["step"])
        state, step, scores, cached = select(best, model_state, task, fold, state, step, scores,
                                             cached)
        if mode == "export":
            # The selected state's scores: select() gives none when that state is the
            # restored latest one, whose checkpoint carries them.
            selected = scores if scores is not None else meta.get("scores")
            export.export(os.path.join(fold_dir, "export"), task=task,
                          graphdef=model_state.graphdef, state=state,
                          example=transform(fold.validation[0]),
                          input_names=task.model_inputs(config, data),
                          meta=dict(task=config.task, step=step, release=data.release,
                                    release_id=data.release_id, fold=fold.name,
                                    **task.export_metadata(config, data, selected)))
            return FoldResult(fold.name, step, {})
        if scores is None or mode == "evaluate":  # evaluate always measures afresh
            scores, cached = measure(evaluator, task, data, fold, state)
            _log_scores(fold, step, scores, "selected state" if task.SELECT else "")
        if fitted is not None:
            check_beats_reference(task, fold, scores)
        if mode == "evaluate" or fold.predict is None:
            return FoldResult(fold.name, step, scores)
        ids, outputs, kept = (cached if cached is not None and fold.predict is fold.validation
                              else evaluator(state, fold.predict))
        return FoldResult(fold.name, step, scores, ids, outputs, kept)
    finally:  # also on errors: an async save in flight completes, the last good one stays
        ckpt.close()
        if best is not None:
            best.close()


def fit_reference(config, task, data, fold, readout, transform, cache):
    """The task's linear read-out fitted on the fold's train split, its penalty chosen on the
    fold's selection split by the task's selection metric (or its first metric), reading the
    run's transformed splits."""
    start = time.time()
    metric, direction = task.SELECT or (None, "max")

    def score(outputs, rows):
        values = task.eval_metrics(outputs, rows, data, prefix="")
        return values[metric] if metric else next(iter(values.values()))

    fitted = reference.fit(readout, fold.train, fold.selection, transform,
                           fields=task.EVAL_FIELDS, id_field=task.ID_FIELD,
                           l2_grid=tuple(config.reference.l2), score=score,
                           higher_is_better=direction == "max",
                           iterations=int(config.reference.iterations),
                           cache=cache)
    logging.info("%s: reference %s fitted in %.1f s", fold.name or "run", readout.name,
                 time.time() - start)
    return fitted


def reference_fold(config, mode, task, data, fold, writer, readout, transform, cache):
    """The fold when the reference read-out is the model: fitted afresh in every mode (it is
    deterministic and takes seconds), nothing to checkpoint or export."""
    if mode == "export":
        raise ValueError(f"config.model.name={readout.name!r} is the reference read-out, "
                         f"refitted by every run; --mode=export serves trained models")
    fitted = fit_reference(config, task, data, fold, readout, transform, cache)
    scores = task.eval_metrics(*fitted.outputs(fold.validation)[1:], data)
    if fold.select is not None:
        scores.update(task.eval_metrics(*fitted.outputs(fold.select)[1:], data,
                                        prefix=SELECT_PREFIX))
    _log_scores(fold, 0, scores, f"reference {readout.name}")
    writer.start(0, fold=fold.index)
    writer.write(0, scores, fold=fold.index)
    if mode == "evaluate" or fold.predict is None:
        return FoldResult(fold.name, 0, scores)
    return FoldResult(fold.name, 0, scores, *fitted.outputs(fold.predict))


def measure(evaluator, task, data, fold, state):
    """Validation scores ("val/"), and the selection split's ("inner/") when the fold has its
    own; with the validation evaluation (ids, outputs, kept) for reuse."""
    cached = evaluator(state, fold.validation)
    scores = task.eval_metrics(cached[1], cached[2], data)
    if fold.select is not None:
        scores.update(task.eval_metrics(*evaluator(state, fold.select)[1:], data,
                                        prefix=SELECT_PREFIX))
    return scores, cached


def selection_key(task, fold, reference=False):
    """The scores key that selects the state: "inner/mae", "val/waf", ... ("ref_" inserted for
    the reference's score on the same split)."""
    prefix = SELECT_PREFIX if fold.select is not None else "val/"
    return f"{prefix}{'ref_' if reference else ''}{task.SELECT[0]}"


def check_beats_reference(task, fold, scores):
    """A loud warning when the selected state does not beat the linear reference on the
    selection split: then the deep model adds nothing the read-out does not already give."""
    if not task.SELECT:
        return
    key, ref_key = selection_key(task, fold), selection_key(task, fold, reference=True)
    if ref_key not in scores:
        return
    if not _improves(scores[key], scores[ref_key], task.SELECT[1]):
        bar = "!" * 78
        logging.warning("\n%s\n%s: THE MODEL DOES NOT BEAT ITS LINEAR REFERENCE on the "
                        "selection split: %s=%.4g vs %s=%.4g. Its predictions are no better than"
                        " a read-out fitted in seconds; check the schedule, the model size or "
                        "the data.\n%s", bar, fold.name or "run", key, scores[key], ref_key,
                        scores[ref_key], bar)


def train_fold(config, task, data, fold, model_state, evaluator, ckpt, best, writer):
    """Trains from the latest checkpoint (or from scratch) to total_steps.

    Returns (last state, its step, its validation scores, its evaluation outputs or None).
    """
    # The MFU's peak, measured (once per process) before the input pipeline's threads compete
    # for the cores.
    costs.peak_flops(config.model.get("dtype", "float32"), model_state.mesh.size)
    train_iter = pipeline.train_iterator(
        fold.train, evaluator.transform, global_batch_size=config.batch_size,
        seed=model_state.data_seed, cache=evaluator.cache,
        read_threads=config.pipeline.read_threads,
        prefetch_batches=config.pipeline.prefetch_batches,
        on_device=on_device.for_run(config, model_state.mesh))
    latest, scores = ckpt.latest_step(), None
    if latest is None:
        state, step = model_state.init(), 0
    else:
        state, meta = ckpt.restore(latest, model_state.restore_target(), train_iter)
        check_release(meta, data, ckpt)
        step, scores = int(meta["step"]), meta.get("scores")
        logging.info("restored step %d from %s", step, ckpt.directory)
    writer.start(step, fold=fold.index)  # rows past `step` from an interrupted run are dropped
    best_value = None
    if best is not None and best.latest_step() is not None:
        best_value = best.meta(best.latest_step())["scores"][selection_key(task, fold)]
    if step < config.total_steps:
        logging.info("training %s parameters from step %d to %d",
                     f"{model_state.num_params:,}", step, config.total_steps)
    log = StepLog(config, writer, fold, ckpt)
    compiled, cached = None, None
    with StopSignals() as stop:
        while step < config.total_steps:
            batch = sharding.to_global(next(train_iter), model_state.mesh, config)
            if compiled is None:
                compiled = model_state.compiled_train_step(state, batch)
                log.record_cost(compiled.cost)  # logged and written once; MFU divides by it
                log.restart_clock()  # steps/s should not include compilation
                # Held as a flat list between steps; the state is built from it where an
                # evaluation or a save needs it (ModelState.compiled_train_step says why).
                leaves = compiled.flatten(state)
            leaves, step_metrics = compiled.leaves(leaves, batch)
            step += 1
            log.add(step, step_metrics)
            last = step == config.total_steps
            if step % config.log_every == 0 or last:
                log.flush()
            if step % config.eval_every == 0 or last:
                log.flush()  # never select or keep a state whose loss went non-finite
                state = compiled.unflatten(leaves)
                scores, cached = measure(evaluator, task, data, fold, state)
                writer.write(step, scores, fold=fold.index)
                _log_scores(fold, step, scores)
                key = selection_key(task, fold)
                if best is not None and _improves(scores[key], best_value, task.SELECT[1]):
                    best_value = scores[key]
                    best.save(step, state, None, _meta(data, step, scores))
                log.restart_clock()  # steps/s and MFU count training steps, not evaluation
            # Several processes stop at the step they agreed on, the last one too.
            stopping = stop.requested(step) and (not last or stop.together)
            if step % config.checkpoint_every == 0 or last or stopping:
                log.flush()  # never checkpoint a state whose loss went non-finite
                state = compiled.unflatten(leaves)
                ckpt.save(step, state, train_iter, _meta(data, step, scores))
            if stopping:
                ckpt.wait()
                raise Stopped(step, stop.signum)
    if compiled is not None:
        state = compiled.unflatten(leaves)
    return state, step, scores, cached


def select(best, model_state, task, fold, state, step, scores, cached):
    """The best state if the task selects one, else the given (last) state, with its scores
    and, when it is the given state, its cached evaluation."""
    if best is None or best.latest_step() is None or best.latest_step() == step:
        return state, step, scores, cached
    best_step = best.latest_step()
    best_state, meta = best.restore(best_step, model_state.restore_target())
    key = selection_key(task, fold)
    logging.info("%s: using the best state, step %d (%s=%.4g)", fold.name or "run", best_step,
                 key, meta["scores"][key])
    return best_state, best_step, meta["scores"], None


class Evaluator:
    """Every example of a split once, through the jitted eval step on the mesh.

    `evaluator(state, source)` returns (ids, outputs, kept fields) in split order, gathered
    from every process; padding added to the last batch is masked out. With a fitted
    reference, kept["reference"] holds its outputs for the same examples. With `cache` (the
    run's pipeline.TransformCache), a split it holds is transformed once, not per evaluation.
    """

    def __init__(self, config, mesh, task, model_state, transform, reference=None, cache=None):
        self.config, self.mesh, self.task, self.transform = config, mesh, task, transform
        self.eval_step = model_state.eval_step()
        self.reference, self.cache = reference, cache

    def __call__(self, state, source):
        task, local_ids, parts = self.task, {}, []
        for local, batch_ids in pipeline.eval_batches(
                source, self.transform, global_batch_size=self.config.eval_batch_size,
                id_field=task.ID_FIELD, cache=self.cache):
            local_ids.update(zip(local["index"][:len(batch_ids)].tolist(), batch_ids))
            batch = sharding.to_global(local, self.mesh, self.config)
            out = self.eval_step(state, batch)
            keep = {k: batch[k] for k in ("mask", "index") + task.EVAL_FIELDS}
            parts.append(multihost_utils.process_allgather(dict(out=out, **keep), tiled=True))
        gathered = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        valid = gathered.pop("mask").astype(bool)
        rows = {k: v[valid] for k, v in gathered.items()}
        order = np.argsort(rows["index"], kind="stable")
        rows = {k: v[order] for k, v in rows.items()}
        if len(rows["index"]) != len(source) or np.any(rows["index"] != np.arange(len(source))):
            raise RuntimeError(f"Evaluation saw {len(rows['index'])} of {len(source)} examples")
        # Ids of examples another process evaluated: from the cache, else read from the source.
        cached = None if self.cache is None else self.cache.get(source, self.transform,
                                                                 task.ID_FIELD)
        ids = [local_ids[i] if i in local_ids else cached.id(i) if cached is not None else
               pipeline.decode_id(source[i], task.ID_FIELD) for i in rows["index"].tolist()]
        if self.reference is not None:
            rows["reference"] = self.reference.outputs(source)[1]
        return ids, rows.pop("out"), rows


class StepLog:
    """Per-step scalars stay on device until a flush: then they are fetched at once, checked
    for a non-finite loss, averaged, written and logged with steps/s, samples/s, MFU and ETA
    (`perf/...`). The compiled step's costs (`record_cost`, merjax/costs.py) are logged and
    written once (`cost/...`, one row without a fold: a resumed run or the next fold replaces
    it)."""

    def __init__(self, config, writer, fold, ckpt):
        self.config, self.writer, self.fold, self.ckpt = config, writer, fold, ckpt
        self.pending, self.start, self.start_step = [], time.time(), None
        self.cost = {}

    def record_cost(self, cost):
        self.cost = cost
        logging.info("%scost: %s", f"{self.fold.name} " if self.fold.name else "",
                     costs.describe(cost))
        self.writer.write_summary(0, costs.metrics(cost))

    def restart_clock(self):
        self.start, self.start_step = time.time(), None

    def add(self, step, scalars):
        if self.start_step is None:
            self.start_step = step - 1
        self.pending.append((step, scalars))

    def flush(self):
        if not self.pending:
            return
        fetched = jax.device_get(self.pending)
        for s, m in fetched:
            if not np.isfinite(m["loss"]):
                raise FloatingPointError(
                    f"Non-finite loss {m['loss']} at step {s}; stopping. The last good checkpoint"
                    f" is step {self.ckpt.latest_step()} in {self.ckpt.directory}; rerunning "
                    f"resumes from it (lower config.optim.lr or check the data).")
        means = {f"train/{k}": float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}
        last = fetched[-1][0]
        rate = (last - self.start_step) / max(time.time() - self.start, 1e-9)
        perf = {"perf/steps_per_s": rate, "perf/samples_per_s": rate * self.config.batch_size}
        mfu = costs.mfu(self.cost.get("flops_per_step"), rate,
                        self.cost.get("peak_flops_per_s"))
        if mfu is not None:
            perf["perf/mfu"] = mfu
        self.writer.write(last, {**means, **perf}, fold=self.fold.index)
        eta = (self.config.total_steps - last) / max(rate, 1e-9)
        logging.info("%sstep %d/%d  loss %.5f  %.2f steps/s  %.1f samples/s  MFU %s  ETA %dm%02ds",
                     f"{self.fold.name} " if self.fold.name else "", last,
                     self.config.total_steps, means["train/loss"], rate,
                     perf["perf/samples_per_s"], "n/a" if mfu is None else f"{mfu:.2%}",
                     eta // 60, eta % 60)
        self.pending.clear()
        self.start, self.start_step = time.time(), last


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a stop the loop checks after each step (it then
    checkpoints and stops); a second one interrupts at once. Only the main thread can install
    handlers; elsewhere this does nothing.

    With several processes (`together`) every one must stop after the same step, since they
    write each checkpoint together: SIGTERM is left to JAX's preemption service (installed by
    jax.distributed.initialize), which names a step after the latest one any process reached
    (multihost_utils.reached_preemption_sync_point, which orbax's saves call too, with the same
    step numbers), and SIGINT is passed on to it as a SIGTERM. A signal that arrives during a
    fold's last step may be named step total_steps + 1 of that fold: then no process stops.
    """

    def __init__(self):
        self.signum, self._previous = None, {}
        self.together = jax.process_count() > 1

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None:
            raise KeyboardInterrupt(f"second signal {signum}")
        self.signum = signum
        logging.warning("signal %d: checkpointing after %s step, then stopping", signum,
                        "an agreed" if self.together else "this")
        if self.together:
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, step):
        """Whether to stop after `step` (of this fold); called after every step, by every
        process."""
        if not self.together:
            return self.signum is not None
        if multihost_utils.reached_preemption_sync_point(step):
            self.signum = self.signum or signal.SIGTERM
            return True
        return False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT,) if self.together else (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


def _log_scores(fold, step, scores, note=""):
    logging.info("eval%s @ step %d%s: %s", f" {fold.name}" if fold.name else "", step,
                 f" ({note})" if note else "",
                 ", ".join(f"{k}={v:.4g}" for k, v in sorted(scores.items())))


def _meta(data, step, scores):
    """The JSON saved beside a checkpoint: what a restore checks and reports."""
    return dict(step=step, release=data.release, release_id=data.release_id, scores=scores)


def _improves(value, best_value, direction):
    if best_value is None:
        return True
    return value > best_value if direction == "max" else value < best_value


def check_release(meta, data, ckpt):
    """A checkpoint resumes or serves only the release (and release files) it was trained on."""
    for key in ("release", "release_id"):
        if key in meta and meta[key] != getattr(data, key):
            raise ValueError(f"Checkpoint in {ckpt.directory} was trained on {key} "
                             f"{meta[key]!r}; this run uses {getattr(data, key)!r}. Use another "
                             f"--workdir for another release.")


# Shared by the ModelStates of one program (see ModelState.compiled_train_step).
_OPTIMIZERS = {}
_COMPILED = {}
_COMPILED_KEPT = 4


class ModelState:
    """The model + optimizer as one sharded nnx.State: abstract shapes, init, restore target, and
    the jitted train and eval steps over it. The benchmark builds the same object.

    Randomness: parameter init, dropout and data order are independent streams derived from
    `config.seed` and the fold index, so CV folds differ and a rerun repeats them exactly.
    """

    def __init__(self, config, mesh, task, data, stats, fold_index=None):
        self.config, self.mesh, self.task = config, mesh, task
        # One optimizer object per program: it is part of the graphdef, which keys the
        # compiled steps that the folds of a run share (`compiled_train_step`).
        # The functions are in the key by identity: a task function replaced at run time (a
        # test's monkeypatch, a notebook's edit) is another program, never a stale cache hit.
        self._program = (task.__name__, task.loss, task.predict,
                         config.to_json_best_effort(sort_keys=True), mesh)
        if self._program not in _OPTIMIZERS:
            _OPTIMIZERS.clear()
            _OPTIMIZERS[self._program] = optim.make(config.optim, config.total_steps)
        self.tx, self.lr_schedule = _OPTIMIZERS[self._program]
        root = jax.random.fold_in(jax.random.key(config.seed),
                                  0 if fold_index is None else fold_index + 1)
        self.params_key, self.dropout_key = (jax.random.fold_in(root, i) for i in (0, 1))
        self.data_seed = int(np.random.SeedSequence(
            [int(config.seed), 0 if fold_index is None else fold_index + 1]).generate_state(1)[0])

        def build():
            model = task.build_model(config, data, stats, nnx.Rngs(params=self.params_key))
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

    def compiled_train_step(self, state, batch, compiler_options=None):
        """The train step compiled for the shapes and shardings of (state, batch): (state,
        batch) -> (state, metrics), with its `.cost` (merjax/costs.py: FLOPs, bytes, memory,
        parameter and optimizer bytes, peak FLOP/s). Compiled, and its cost read, once per
        process for every ModelState of the same program (the folds of a CV run differ only in
        their dropout key, an argument). `compiler_options`: XLA debug options for this
        compile (the benchmark's GPU profile turns command buffers off).

        The compiled program takes and returns the state's leaves, a flat list: a loop that
        holds them between steps calls `.leaves(leaves, batch)` -> (leaves, metrics), with
        `.flatten(state)` and `.unflatten(leaves)` at its ends. Why: flattening the nnx.State
        at every call and building it again from the outputs took 0.23 ms a step (87 leaves,
        MERTools' model; its whole step takes ~2 ms on the 2-core CPU), a flat list ~0.01."""
        leaves = tuple((x.shape, x.dtype, x.sharding) for x in jax.tree.leaves((state, batch)))
        options = dict(compiler_options or {})
        # task.loss too: the step traces whatever it is now (a test may swap it for a NaN loss).
        key = (self._program, self.task.loss, self.graphdef, jax.tree.structure((state, batch)),
               leaves, tuple(sorted(options.items())))
        if key not in _COMPILED:
            if len(_COMPILED) >= _COMPILED_KEPT:  # bounded: a test session runs many programs
                _COMPILED.pop(next(iter(_COMPILED)))
            # Traced under the mesh: a layer may size its work by the devices (layers.attend).
            with jax.set_mesh(self.mesh):
                traced = self.train_step(jax.tree.structure(state)).trace(
                    jax.tree.leaves(state), batch, self.dropout_key)
            compiled = traced.lower().compile(options or None)
            sharding.log_memory(compiled)
            _COMPILED[key] = compiled, costs.train_step_costs(
                compiled, traced.jaxpr, self.abstract, self.mesh,
                self.config.model.get("dtype", "float32")), traced.jaxpr
        (compiled, cost, jaxpr), dropout_key = _COMPILED[key], self.dropout_key
        treedef = jax.tree.structure(state)

        def run(state, batch):
            leaves, metrics = compiled(jax.tree.leaves(state), batch, dropout_key)
            return jax.tree.unflatten(treedef, leaves), metrics

        run.leaves = lambda leaves, batch: compiled(leaves, batch, dropout_key)
        run.flatten = jax.tree.leaves
        run.unflatten = functools.partial(jax.tree.unflatten, treedef)
        run.cost = cost
        run.jaxpr = jaxpr  # what the benchmark times the matmuls of (costs.matmuls_alone)
        return run

    def train_step(self, treedef):
        """The jitted train step (state leaves, batch, dropout key) -> (state leaves, metrics),
        for a state of structure `treedef` (leaves in jax.tree.leaves order).

        With `config.optim.accum_steps` k > 1 the batch is split into k micro-batches whose
        loss, aux metrics and gradients are averaged in a scan, then applied in one update: the
        step of k = 1 (to float rounding; dropout draws differ) holding the activations of one
        micro-batch at a time.
        """
        config, task, graphdef, lr_schedule = self.config, self.task, self.graphdef, self.lr_schedule
        accum = int(config.optim.accum_steps)
        # Micro-batch i holds examples i, i + k, ...: each device keeps its own examples and
        # every micro-batch spreads over all batch shards, as the whole batch does.
        micro_sharding = jax.sharding.NamedSharding(
            self.mesh, jax.sharding.PartitionSpec(None, sharding.batch_axes(config)))

        def micro_batches(batch):
            def split(x):
                if x.shape[0] % accum:
                    raise ValueError(f"a batch of {x.shape[0]} examples does not split into "
                                     f"config.optim.accum_steps={accum} micro-batches")
                x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(x, micro_sharding)
            return jax.tree.map(split, batch)

        def step(leaves, batch, dropout_key):
            batch = on_device.unpack(batch)  # a batch gathered on the devices comes packed
            model, opt = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
            opt_step = opt.step[...]
            # Randomness is a function of (seed, fold, step) only: a resumed run repeats it.
            key = jax.random.fold_in(dropout_key, opt_step)

            def loss_and_grads(model, batch, key):
                # The Rngs are made inside the differentiated function: NNX forbids mutating RNG
                # counters created outside the grad trace.
                return nnx.value_and_grad(
                    lambda m: task.loss(m, batch, config, nnx.Rngs(dropout=key)),
                    has_aux=True)(model)

            if accum == 1:
                (loss, aux), grads = loss_and_grads(model, batch, key)
            else:
                def add(total, model, i, micro):
                    out, grads = loss_and_grads(model, micro, jax.random.fold_in(key, i))
                    return jax.tree.map(jax.numpy.add, total, grads), out

                zeros = jax.tree.map(jax.numpy.zeros_like, nnx.state(model, nnx.Param))
                # nnx.scan: the model enters as a graph node, broadcast to every micro-batch.
                grads, (loss, aux) = nnx.scan(
                    add, in_axes=(nnx.Carry, None, 0, 0), out_axes=(nnx.Carry, 0))(
                        zeros, model, jax.numpy.arange(accum), micro_batches(batch))
                grads = jax.tree.map(lambda g: g / accum, grads)
                loss, aux = jax.tree.map(lambda x: x.mean(axis=0), (loss, aux))
            opt.update(model, grads)
            scalars = dict(loss=loss, grad_norm=optax.tree.norm(grads), lr=lr_schedule(opt_step))
            return jax.tree.leaves(nnx.state((model, opt))), {**scalars, **aux}

        return jax.jit(step, out_shardings=(jax.tree.leaves(self.shardings),
                                            sharding.replicated(self.mesh)), donate_argnums=0)

    def eval_step(self):
        """The jitted eval step, one per program like the train step (jit caches its shapes)."""
        graphdef, task = self.graphdef, self.task
        key = ("eval", self._program, graphdef)

        def step(state, batch):
            model, _ = nnx.merge(graphdef, state)
            return task.predict(model, batch)

        if key not in _COMPILED:
            if len(_COMPILED) >= _COMPILED_KEPT:
                _COMPILED.pop(next(iter(_COMPILED)))
            _COMPILED[key] = jax.jit(step)
        jitted, mesh = _COMPILED[key], self.mesh

        def run(state, batch):
            with jax.set_mesh(mesh):  # traced under the mesh, as the train step is
                return jitted(state, batch)

        return run
