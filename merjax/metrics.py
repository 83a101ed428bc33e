"""Track metrics in numpy (the official scorers' rules) and the metric writer.

The writer is the only place that writes `metrics.jsonl` and TensorBoard events, and only on
process 0, so every process can call it.
"""
import json
import os

import numpy as np

# The MER-FG tables and openset parser live with the release reader (no JAX or TFDS behind them).
from tfds_builders.mer2026 import emotion_wheel
from tfds_builders.mer2026.csvs import string_to_list
from merjax.submission import ps_to_submission


def mae(pred, target):
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64))))


def pearson(x, y):
    """Pearson r; 0 where either side is constant (r is undefined there)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(xc * xc) * np.sum(yc * yc))
    return float(np.sum(xc * yc) / denom) if denom > 0 else 0.0


def ccc(x, y):
    """Lin's concordance correlation coefficient (population moments)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    covariance = np.mean((x - x.mean()) * (y - y.mean()))
    denom = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    return float(2 * covariance / denom) if denom > 0 else 0.0


def ps_metrics(pred_raw, target_raw, prefix=""):
    """MER-PS scores of [N, 2] (valence, arousal) predictions on the raw scale.

    MAE follows the official scorer: predictions rounded to integers in [1, 255] first. CCC and
    Pearson are computed on the same integers.
    """
    pred = ps_to_submission(pred_raw)
    target = np.asarray(target_raw, np.float64)
    out = {f"{prefix}mae": mae(pred, target)}
    for i, dim in enumerate(("valence", "arousal")):
        out[f"{prefix}mae_{dim}"] = mae(pred[:, i], target[:, i])
        out[f"{prefix}ccc_{dim}"] = ccc(pred[:, i], target[:, i])
        out[f"{prefix}pearson_{dim}"] = pearson(pred[:, i], target[:, i])
    return out


class MetricWriter:
    """`metrics.jsonl` lines `{"step": s, ["fold": k,] name: value, ...}` and TensorBoard scalars
    (one event folder per fold: tensorboard/ or tensorboard/fold_k/), process 0 only.

    A resumed run stays one continuous history: `start(step, fold)` drops that fold's lines past
    `step` and tells TensorBoard to purge its events past `step`, so every step appears once.
    """

    def __init__(self, workdir, enabled=True):
        import jax  # here: the scorer (merjax.score) uses this module without JAX
        self.enabled = enabled and jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb_dir = os.path.join(workdir, "tensorboard")
        self._tb = {}

    def start(self, step, fold=None):
        if not self.enabled:
            return
        self._drop(lambda r: r.get("fold") == fold and r["step"] > step)
        if fold in self._tb:
            self._tb.pop(fold).close()
        self._tb_writer(fold, purge_step=step + 1)

    def write(self, step, scalars, fold=None):
        if not self.enabled:
            return
        record = {"step": int(step)} if fold is None else {"step": int(step), "fold": fold}
        record.update({k: float(v) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        tb = self._tb_writer(fold)
        for name, value in scalars.items():
            tb.add_scalar(name, float(value), int(step))
        tb.flush()

    def write_summary(self, step, scalars):
        """Cross-fold scores (no fold tag): replaces the summary of an earlier run."""
        if self.enabled:
            names = set(scalars)
            self._drop(lambda r: "fold" not in r and names & set(r))
            self.write(step, scalars)

    def _drop(self, unwanted):
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        kept = [r for r in rows if not unwanted(r)]
        if len(kept) != len(rows):
            with open(self.path + ".tmp", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(self.path + ".tmp", self.path)

    def _tb_writer(self, fold, purge_step=None):
        if fold not in self._tb:
            # tensorboardX writes event files without TensorFlow.
            from tensorboardX import SummaryWriter
            logdir = self.tb_dir if fold is None else os.path.join(self.tb_dir, f"fold_{fold}")
            self._tb[fold] = SummaryWriter(logdir, purge_step=purge_step)
        return self._tb[fold]

    def close(self):
        for tb in self._tb.values():
            tb.close()
        self._tb.clear()


def weighted_f1(y_true, y_pred):
    """sklearn's f1_score(average='weighted'): per-class F1 weighted by true support.

    The MER-Cross and MER-Prefer scorers use this WAF. Classes that only appear in predictions
    carry zero weight; a class with no true and no predicted example is absent.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return 0.0
    total = 0.0
    for c in np.unique(y_true):
        tp = np.sum((y_true == c) & (y_pred == c))
        precision_denom, recall_denom = np.sum(y_pred == c), np.sum(y_true == c)
        f1 = 0.0 if tp == 0 else 2 * tp / (precision_denom + recall_denom)
        total += recall_denom * f1
    return float(total / len(y_true))


def accuracy(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def mse(pred, target):
    """Mean squared error over all values: the MER-PS scorer's auxiliary score (the starting kit)."""
    diff = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    return float(np.mean(diff * diff))


# ------------------------------------------------------------------------------------------------
# MER-FG (track 2): the emotion-wheel F1


def ew_scores(gold, pred, wheel=None, level="level1"):
    """MER-FG scores as MERTools' evaluation.py computes them (MER2026.md §6.2).

    gold, pred: sequences aligned by sample (gold[i] and pred[i] describe sample i), each item
    an `openset` cell ("a,b", "[a, b]", parsed with string_to_list) or a sequence of words.
    wheel: an emotion_wheel.Wheel (default: the tables carried with the code).

    Per wheel, every word becomes its category on that wheel (Wheel.cluster: unknown words are
    dropped); a sample whose gold words all drop is skipped (gold only "neutral"), an empty
    prediction scores P = R = 0; P and R are averaged over the counted samples and F1 comes
    from those averages (not an average of per-sample F1). EW-F1/P/R are the means over the
    five wheels; EW-F1 ranks.

    Returns {"ew_f1", "ew_p", "ew_r", "n"} plus "<wheel>_f1", "<wheel>_p", "<wheel>_r" and
    "<wheel>_n" (samples counted on that wheel) for wheel1..wheel5.
    """
    if len(gold) != len(pred):
        raise ValueError(f"ew_scores: {len(gold)} gold samples but {len(pred)} predictions; "
                         f"expected them aligned by sample")
    wheel = emotion_wheel.load() if wheel is None else wheel
    gold_words = [_words(item) for item in gold]
    pred_words = [_words(item) for item in pred]
    gold_bits, pred_bits = {}, {}
    for name in emotion_wheel.WHEELS:
        index = {c: i for i, c in enumerate(wheel_categories(wheel, name, level))}
        gold_bits[name], pred_bits[name] = (
            _bits([_clusters(wheel, words, name, level) for words in side], index)
            for side in (gold_words, pred_words))
    return ew_cluster_scores(gold_bits, pred_bits)


def wheel_categories(wheel, name, level="level1"):
    """The sorted categories of one wheel at `level` (the columns of its cluster bits)."""
    table = wheel.wheels[name] if level == "level1" else wheel.wheels_level2[name]
    return tuple(sorted(set(table.values())))


def ew_cluster_scores(gold, pred):
    """EW scores from per-wheel cluster sets as bits: {wheel: bool [N, categories]} each side.

    Per wheel a sample whose gold has no cluster is skipped, an empty prediction scores
    P = R = 0; P and R are averaged over the counted samples and F1 comes from those
    averages (not an average of per-sample F1). EW-F1/P/R are the means over the wheels.
    """
    out, per_wheel = {}, []
    for name in gold:
        g, p = np.asarray(gold[name], bool), np.asarray(pred[name], bool)
        counted = g.any(axis=1)
        hits = (g & p).sum(axis=1)[counted].astype(np.float64)
        guessed = p.sum(axis=1)[counted]
        precision = np.where(guessed > 0, hits / np.maximum(guessed, 1), 0.0)
        recall = hits / g.sum(axis=1)[counted]
        prec = float(precision.mean()) if len(precision) else 0.0
        rec = float(recall.mean()) if len(recall) else 0.0
        f = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
        out.update({f"{name}_f1": f, f"{name}_p": prec, f"{name}_r": rec,
                    f"{name}_n": int(counted.sum())})
        per_wheel.append([f, prec, rec])
    # One mean over the (wheel, score) table, as the official scorer does.
    f, p, r = np.mean(np.asarray(per_wheel, np.float64), axis=0).tolist()
    return {"ew_f1": f, "ew_p": p, "ew_r": r, "n": len(next(iter(gold.values()))), **out}


def _bits(sets, index):
    bits = np.zeros((len(sets), len(index)), bool)
    for i, clusters in enumerate(sets):
        bits[i, [index[c] for c in clusters]] = True
    return bits


def _words(item):
    """A sample's words: an `openset` cell parsed as the scorer does, or the sequence given."""
    return string_to_list(item) if item is None or isinstance(item, (str, float)) else list(item)


def _clusters(wheel, words, name, level):
    return {c for c in (wheel.cluster(w, name, level) for w in words) if c is not None}


# ------------------------------------------------------------------------------------------------
# MER-Prefer (track 3): which of two descriptions is preferred


def preference_scores(gold, pred):
    """MER-Prefer's two-class scores as MER2026_Track3's func_preference_metric computes them
    (MER2026.md §6.3): rows aligned by position, coded a1=0, a2=1, same=2; rows whose gold is a
    tie are left out, a predicted tie counts as a1; sklearn's weighted F1 (the ranking score)
    and accuracy over the rest. Returns {"waf", "acc", "n"} (n: the rows scored)."""
    gold, pred = np.asarray(gold), np.asarray(pred)
    if gold.shape != pred.shape:
        raise ValueError(f"preference_scores: {gold.shape} gold rows but {pred.shape} "
                         f"predictions; expected them aligned by row")
    scored = gold != 2
    y, y_pred = gold[scored], np.where(pred[scored] == 2, 0, pred[scored])
    return {"waf": weighted_f1(y, y_pred), "acc": accuracy(y, y_pred), "n": int(scored.sum())}


def preference_waf3(gold, pred):
    """The three-class variant (a1, a2, same; ties kept on both sides): weighted F1 over every
    row, for analysis only (it does not rank)."""
    return weighted_f1(gold, pred)
