"""A MER-PS test folder in the hidden-test layout, cut from a release, to rehearse a submission.

The challenge runs a submission's `predict(input_dir, output_dir)` on hidden subjects whose
folder holds only `sample_ids.csv` and `data/<subject>/{EEG,fNIRS}_{baselines,videos}.mat`: no
labels, no side files, subject names of its own (MER2026.md §5.7). `write_test_folder` writes
exactly that from some subjects of a release (e.g. the validation subjects), renamed and with
the ids shuffled, plus the matching `targets.csv` beside the folder (never inside), so
`python -m merjax.score --track=ps` can score the rehearsal.

    python -m tfds_builders.mer_ps.test_folder --release=/data/MER_PS_codabench_public_trainval \
        --subjects=test_21,test_22 --output=/tmp/ps_hidden
"""
from __future__ import annotations

import argparse
import pathlib
import shutil

import numpy as np

from tfds_builders.mer_ps import signals


def write_test_folder(release_root, subjects, output, *, names=None, seed: int = 0):
    """Writes `<output>/input/` (the hidden layout) and `<output>/targets.csv`; returns
    (input folder, {release subject: its name in the folder})."""
    root, output = pathlib.Path(release_root), pathlib.Path(output)
    names = list(names or [f"subject_{chr(ord('a') + i)}" for i in range(len(subjects))])
    if len(names) != len(subjects):
        raise ValueError(f"{len(subjects)} subjects but {len(names)} names")
    input_dir = output / "input"
    if input_dir.exists():
        raise ValueError(f"{input_dir}: already exists; choose an empty --output")
    rows = []
    for subject, name in zip(subjects, names):
        shutil.copytree(root / "data" / subject, input_dir / "data" / name)
        labels = signals.read_mat(root / "annotations" / f"{subject}_label.mat",
                                  tuple(signals.video_var(v) for v in signals.VIDEOS))
        for v in signals.VIDEOS:
            va = np.asarray(labels[signals.video_var(v)])
            rows += [(signals.sample_id(name, v, t), int(va[0, t]), int(va[1, t]))
                     for t in range(va.shape[1])]
    order = np.random.default_rng(seed).permutation(len(rows))
    with open(input_dir / "sample_ids.csv", "w") as f:
        f.write("sample_id\n" + "".join(f"{rows[i][0]}\n" for i in order))
    with open(output / "targets.csv", "w") as f:
        f.write("sample_id,valence,arousal\n" + "".join(f"{i},{v},{a}\n" for i, v, a in rows))
    return input_dir, dict(zip(subjects, names))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="the unzipped MER-PS release")
    parser.add_argument("--subjects", required=True, help="comma-separated, e.g. test_21,test_22")
    parser.add_argument("--output", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    input_dir, renamed = write_test_folder(args.release, args.subjects.split(","), args.output,
                                           seed=args.seed)
    print(f"wrote {input_dir} ({renamed}) and {pathlib.Path(args.output) / 'targets.csv'}")


if __name__ == "__main__":
    main()
