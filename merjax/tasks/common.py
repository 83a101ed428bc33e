"""Pieces every task uses: the Fold it hands the loop, input-statistics helpers and the
submission CSV writer."""
import csv
import dataclasses
import os
import zipfile

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


def write_csv(path, header, rows):
    """A submission CSV, written aside and renamed so a killed run never leaves half a file."""
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(path + ".tmp", path)
    return path


def write_answer(workdir, header, rows, name="answer.csv"):
    """A clip track's submission: `name` in the workdir and answer.zip holding it (what
    Codabench takes). Returns the CSV's path."""
    path = write_csv(os.path.join(workdir, name), header, rows)
    with zipfile.ZipFile(os.path.join(workdir, "answer.zip"), "w", zipfile.ZIP_DEFLATED) as z:
        z.write(path, arcname=name)
    return path
