"""Pieces every task uses: the Fold it hands the loop and input-statistics helpers
(submission files: merjax/submission.py)."""
import dataclasses

import numpy as np


@dataclasses.dataclass
class Fold:
    name: str | None  # None: no cross-validation, outputs go straight into the workdir
    index: int | None
    train: object
    validation: object
    predict: object | None  # the split the submission is written for
    # The split that selects the state (and the reference's penalty); None: `validation`.
    select: object | None = None

    @property
    def selection(self):
        return self.validation if self.select is None else self.select


def stats_sample(source, limit):
    """Indices of at most `limit` examples spread evenly over `source` (input statistics)."""
    n = len(source)
    return np.unique(np.linspace(0, n - 1, min(n, int(limit))).astype(int))


def moments(total, squares, count, floor):
    """Mean and std from sums of values and of their squares over `count` values; 0 and 1 where
    nothing was counted or the std is below `floor` (a constant input is left unscaled)."""
    seen = np.maximum(count, 1)
    mean = total / seen
    std = np.sqrt(np.maximum(squares / seen - mean ** 2, 0))
    return np.where(count > 0, mean, 0.0), np.where((count > 0) & (std > floor), std, 1.0)


def cv_means(results):
    """A cross-validated run's summary: per val/ score every fold has, the mean over folds of
    its selected state's value, as cv/<score>. (A fold restored in --mode=predict measures no
    reference, so only the keys every fold has count.)"""
    keys = [k.split("/", 1)[1] for k in results[0].scores if k.startswith("val/")
            and all(k in r.scores for r in results)]
    return {f"cv/{k}": float(np.mean([r.scores[f"val/{k}"] for r in results])) for k in keys}
