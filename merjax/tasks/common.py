"""Pieces every task uses: the Fold it hands the loop and the submission CSV writer."""
import csv
import dataclasses
import os


@dataclasses.dataclass
class Fold:
    name: str | None  # None: no cross-validation, outputs go straight into the workdir
    index: int | None
    train: object
    validation: object
    predict: object | None  # the split the submission is written for


def write_csv(path, header, rows):
    """A submission CSV, written aside and renamed so a killed run never leaves half a file."""
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(path + ".tmp", path)
    return path
