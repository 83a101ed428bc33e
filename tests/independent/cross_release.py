"""An independent MER-Cross (track 1) release writer, features input, for tests and experiments.

Written from the published track-1 layout (CSV schemas, MERTools feature folders) and from what tfds_builders/mer2026/
{release,csvs}.py accept, never from the project's demo writer. No demo marker is written.

What it writes (the features path reads nothing else, so no audio/ or openface_face/):
  track1_train.csv (name,discrete), track1_track2_candidate.csv (name), subtitle_chieng.csv
  (name,chinese,english) and <features>/<folder>/<name>.npy, float32 (D,) at utterance level
  or (T, D) at frame level (or, with feature_level="frame_files", a folder <name>/ of per-frame
  (D,) npys). layout="flat" puts all of it in `root`; "nested" puts it in root/mer2026-dataset/.

Features. For modality m with class y (the listener's emotion, for train rows and candidates
alike):
    x = offset_m + scale_m * s_m * (mu_m[y] + noise * e),   e ~ N(0, I)
mu_m[c] ~ N(0, separation_m^2 I) is a random class mean per modality and class, s_m a fixed
per-dimension scale exp(N(0, dim_scale_sd^2)), offset_m a fixed vector N(0, offset^2 I) shared by
every clip. So the classes are linearly separable only up to the noise: a linear classifier on
the concatenated, standardised features does well but not perfectly. Frame-level files hold T
frames x + N(0, frame_noise^2), centred so that their mean is exactly that utterance vector.
The candidates' labels are never written into the release: they are returned and, with
`truth_path`, written as a `name,discrete` file outside it.
"""
from __future__ import annotations

import csv
import dataclasses
import pathlib

import numpy as np

LABELS = ("neutral", "angry", "happy", "sad", "worried", "surprise")
FOLDERS = ("chinese-hubert-base-UTT", "chinese-macbert-large-UTT", "clip-vit-large-patch14-UTT")
TRAIN_PROBS = (0.3, 0.2, 0.2, 0.12, 0.12, 0.06)  # imbalanced, like emotion corpora
_SUBTITLES = (("我不知道你在说什么", "I don't know what you're talking about"),
              ("真的吗？太好了，谢谢", 'Really? Great, "thanks"'),
              ("你怎么能这样", ""),
              ("嗯，好吧", "Well, okay,\nfine"))


@dataclasses.dataclass(frozen=True)
class CrossRelease:
    root: pathlib.Path            # the release root (holding the CSVs)
    features_root: pathlib.Path
    folders: tuple[str, str, str]
    dims: tuple[int, int, int]
    train: dict                   # name -> label string
    candidates: dict              # name -> label string (the truth; not in the release)


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _names(rng, n, start):
    """Unique names in the release's mixed styles (sample_, samplenew3_), never sorted by class."""
    prefixes = np.array(["sample_", "samplenew3_", "samplenew4_"])
    ids = rng.permutation(np.arange(start, start + n))
    return [f"{prefixes[i % 3]}{i:08d}" for i in ids]


def write_cross_release(root, *, seed=0, n_train=600, n_candidates=400, dims=(768, 1024, 768),
                        folders=FOLDERS, separation=0.06, noise=1.0, offset=0.0, scale=1.0,
                        dim_scale_sd=0.0, feature_level="utt", frames=(4, 16), frame_noise=0.5,
                        layout="flat", train_probs=TRAIN_PROBS, candidate_probs=None,
                        truth_path=None) -> CrossRelease:
    """Writes the release and returns its truth; see the module doc.

    separation and scale may be one number or one per modality (audio, text, video). With the
    default dims, separation=0.06 and 2000 train rows, a logistic regression on standardised
    features scores about 0.77 candidate WAF; the Bayes rate is higher (about 0.8 nearest mean).
    candidate_probs: the candidates' class frequencies (default: the train ones).
    """
    if feature_level not in ("utt", "frame", "frame_files"):
        raise ValueError(f"feature_level must be utt, frame or frame_files: {feature_level!r}")
    if layout not in ("flat", "nested"):
        raise ValueError(f"layout must be flat or nested, found {layout!r}")
    base = pathlib.Path(root)
    rel = base / "mer2026-dataset" if layout == "nested" else base
    if truth_path is not None and rel.resolve() in pathlib.Path(truth_path).resolve().parents:
        raise ValueError(f"truth_path {truth_path} must lie outside the release {rel}")
    rng = np.random.default_rng(seed)
    sep = np.broadcast_to(np.asarray(separation, float), 3)
    scl = np.broadcast_to(np.asarray(scale, float), 3)
    probs = np.asarray(train_probs) / np.sum(train_probs)
    cprobs = probs if candidate_probs is None else (np.asarray(candidate_probs)
                                                   / np.sum(candidate_probs))
    train = dict(zip(_names(rng, n_train, 1), rng.choice(6, n_train, p=probs)))
    cands = dict(zip(_names(rng, n_candidates, 10 ** 7), rng.choice(6, n_candidates, p=cprobs)))
    labels = {**train, **cands}

    rel.mkdir(parents=True, exist_ok=True)
    _write_csv(rel / "track1_train.csv", ["name", "discrete"],
               [[n, LABELS[y]] for n, y in train.items()])
    _write_csv(rel / "track1_track2_candidate.csv", ["name"], [[n] for n in cands])
    _write_csv(rel / "subtitle_chieng.csv", ["name", "chinese", "english"],
               [[n, *_SUBTITLES[i % len(_SUBTITLES)]] for i, n in enumerate(labels)])
    features_root = rel / "features"
    for m, (folder, d) in enumerate(zip(folders, dims)):
        means = rng.normal(0, sep[m], (6, d))
        fixed_offset = rng.normal(0, offset, d) if offset else np.zeros(d)
        dim_scale = scl[m] * np.exp(rng.normal(0, dim_scale_sd, d))
        out = features_root / folder
        out.mkdir(parents=True, exist_ok=True)
        for name, y in labels.items():
            x = fixed_offset + dim_scale * (means[y] + noise * rng.normal(size=d))
            if feature_level != "utt":
                t = int(rng.integers(frames[0], frames[1] + 1))
                jitter = rng.normal(0, frame_noise, (t, d))
                x = x + dim_scale * (jitter - jitter.mean(0))   # the frames' mean stays x
            x = x.astype(np.float32)
            if feature_level == "frame_files":
                (out / name).mkdir(exist_ok=True)
                for k, frame in enumerate(x):
                    np.save(out / name / f"{name}_{k:04d}.npy", frame)
            else:
                np.save(out / f"{name}.npy", x)
    truth = {n: LABELS[y] for n, y in cands.items()}
    if truth_path is not None:
        pathlib.Path(truth_path).parent.mkdir(parents=True, exist_ok=True)
        _write_csv(truth_path, ["name", "discrete"], list(truth.items()))
    return CrossRelease(root=rel, features_root=features_root, folders=tuple(folders),
                        dims=tuple(int(d) for d in dims),
                        train={n: LABELS[y] for n, y in train.items()}, candidates=truth)
