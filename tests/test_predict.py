"""From an export to submission files without the training stack (merjax/predict.py), and the
MER-PS code submission on the hidden-test layout (MER2026.md §5.7).

A tiny MER-PS run (configs/ps.py:runlocal) is trained and exported once; its validation
subject, renamed, with its labels and side files gone and its ids shuffled, is the hidden test.
"""
import csv
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from configs import ps as ps_config
from merjax import predict, train
from merjax.data import prepare
from merjax.tasks import ps as ps_task
from tfds_builders.common import ReleaseError
from tfds_builders.mer_ps import signals, test_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Importing any of these in the predicting process fails: it must not need them.
_HEAVY = ("flax", "grain", "optax", "tensorflow_datasets", "tensorflow",
          "merjax.models", "merjax.train", "merjax.tasks")
_PACKAGE_BLOCKS = _HEAVY + ("absl", "ml_collections", "orbax", "orbax.checkpoint", "einops",
                             "librosa")


@pytest.fixture(scope="module")
def ps_run(tmp_path_factory):
    config = ps_config.get_config("runlocal")
    config.data.tfds_dir = str(tmp_path_factory.mktemp("tfds"))
    workdir = tmp_path_factory.mktemp("ps_run")
    train.run(config, str(workdir))
    train.run(config, str(workdir), mode="export")
    data = prepare.prepare(config, ps_task, announce=False)
    return workdir, data.info.metadata["manual_dir"]


@pytest.fixture(scope="module")
def hidden(ps_run, tmp_path_factory):
    """The validation subject test_4 as a hidden test subject named `rater_7_b`."""
    _, release = ps_run
    out = tmp_path_factory.mktemp("hidden")
    input_dir, _ = test_folder.write_test_folder(release, ["test_4"], out, names=["rater_7_b"],
                                                 seed=3)
    return input_dir


def _read(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _blocked(names):
    return "import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in names)


def _run_predict(blocked, args):
    """`python -m merjax.predict <args>` in a fresh process where the modules `blocked` cannot
    be imported; returns what it printed (the submission file's path)."""
    script = _blocked(blocked) + (
        "import runpy\n"
        f"sys.argv = ['merjax.predict', *{args!r}]\n"
        "runpy.run_module('merjax.predict', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def _in_training(workdir):
    """The run's predictions.csv with test_4 renamed as in the hidden folder."""
    _, rows = _read(workdir / "predictions.csv")
    return {r[0].replace("test_4_", "rater_7_b_"): (int(r[1]), int(r[2])) for r in rows}


def test_the_hidden_folder_has_only_what_the_challenge_gives(hidden):
    assert sorted(p.name for p in hidden.iterdir()) == ["data", "sample_ids.csv"]
    assert sorted(p.name for p in (hidden / "data").iterdir()) == ["rater_7_b"]
    assert sorted(p.name for p in (hidden / "data" / "rater_7_b").iterdir()) == sorted(
        signals.SIGNAL_FILES)
    header, rows = _read(hidden / "sample_ids.csv")
    ids = [r[0] for r in rows]
    assert header == ["sample_id"] and ids != sorted(ids)   # shuffled


def test_package_predicts_the_hidden_subjects_in_a_fresh_process(ps_run, hidden, tmp_path):
    workdir, _ = ps_run
    zip_path = predict.package_ps(str(workdir), str(tmp_path / "submission.zip"))
    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "unzipped")
    assert {"model.py", "predict.jax", "params.npz", "signature.json"} <= names
    assert set(predict.PS_PACKAGE_CODE) <= names
    assert not any(n.endswith((".pkl", ".pickle")) or "/params/" in n for n in names)
    with open(tmp_path / "unzipped" / "model.py") as f:
        assert "Needs jax, numpy and scipy only" in f.read(400)

    out = tmp_path / "output"
    script = _blocked(_PACKAGE_BLOCKS) + (
        "import model\n"
        f"model.predict({str(hidden)!r}, {str(out)!r})\n"
        "assert not any(m.split('.')[0] in ('flax', 'orbax', 'grain', 'absl')\n"
        "               for m, v in sys.modules.items() if v is not None)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path / "unzipped", env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    header, rows = _read(out / "predictions.csv")
    assert header == ["sample_id", "valence", "arousal"]
    _, wanted = _read(hidden / "sample_ids.csv")
    ids = [r[0] for r in rows]
    assert sorted(ids) == sorted(r[0] for r in wanted) and len(set(ids)) == len(ids)
    values = np.array([[int(r[1]), int(r[2])] for r in rows])
    assert values.min() >= 1 and values.max() <= 255
    # The same numbers as the run's own predictions for that subject, under its real name.
    assert {r[0]: (int(r[1]), int(r[2])) for r in rows} == _in_training(workdir)


def test_package_names_a_missing_dependency_in_one_line(ps_run, tmp_path):
    workdir, _ = ps_run
    with zipfile.ZipFile(predict.package_ps(str(workdir), str(tmp_path / "s.zip"))) as z:
        z.extractall(tmp_path / "unzipped")
    proc = subprocess.run([sys.executable, "-c", _blocked(["scipy"]) + "import model"],
                          cwd=tmp_path / "unzipped", capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "ImportError: this MER-PS submission needs jax, numpy and scipy; missing: scipy "
        "(pip install scipy)")


def test_predict_command_without_the_training_stack(ps_run, hidden, tmp_path):
    workdir, _ = ps_run
    out = tmp_path / "out"
    printed = _run_predict(_HEAVY, [f"--export_dir={workdir}", f"--input={hidden}",
                                    f"--output={out}", "--batch_size=7"])
    assert printed == str(out / "predictions.csv")
    _, rows = _read(out / "predictions.csv")
    assert {r[0]: (int(r[1]), int(r[2])) for r in rows} == _in_training(workdir)


def test_sample_id_parsing():
    assert signals.parse_sample_id("rater_7_b_V03_T012") == ("rater_7_b", 3, 12)
    assert signals.parse_sample_id("test_1_V15_T1234") == ("test_1", 15, 1234)
    assert signals.parse_sample_id(signals.sample_id("a_V01_x", 1, 0)) == ("a_V01_x", 1, 0)
    for bad in ("test_1_V1_T000", "test_1_V01_T00", "V01_T000", "test_1_V01_T000 "):
        assert signals.parse_sample_id(bad) is None


def _copy(hidden, tmp_path):
    import shutil
    return shutil.copytree(hidden, tmp_path / "input")


@pytest.mark.parametrize("row,message", [
    ("rater_7_b_V3_T000", "line 2: expected a sample id <subject>_V<video, 2 digits>_T<second, "
                          "3 digits> (e.g. test_1_V01_T000), found 'rater_7_b_V3_T000'"),
    ("rater_7_b_V16_T000", "line 2: 'rater_7_b_V16_T000': expected a video in 1..15, found 16"),
    ("nobody_V01_T000", "data/nobody/EEG_baselines.mat: missing; "),
    ("rater_7_b_V01_T009", "EEG_videos.mat: variable 'video_1': "),
])
def test_bad_test_folders_are_named(hidden, tmp_path, row, message):
    root = _copy(hidden, tmp_path)
    ids = (root / "sample_ids.csv").read_text().splitlines()
    (root / "sample_ids.csv").write_text("\n".join([ids[0], row] + ids[1:]) + "\n")
    with pytest.raises(ReleaseError) as err:
        next(signals.hidden_trials(root, eeg_rate_hz=64, context_s=2, fnirs_bins=4,
                                   fnirs_types=(0, 1, 2)))
    assert message in str(err.value)
    assert str(root) in str(err.value)


def test_duplicate_ids_are_named(hidden, tmp_path):
    root = _copy(hidden, tmp_path)
    ids = (root / "sample_ids.csv").read_text().splitlines()
    (root / "sample_ids.csv").write_text("\n".join(ids + [ids[1]]) + "\n")
    with pytest.raises(ReleaseError, match=f"line {len(ids) + 1}: sample id '{ids[1]}' already "
                                           f"on line 2"):
        signals.read_sample_ids(root / "sample_ids.csv")


def test_workdir_without_export_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no export .* --mode=export"):
        predict.find_exports(str(tmp_path))


# ----------------------------------------------------------------------------------------------
# The clip tracks: a tiny cross-validated run per track, exported fold by fold, then predicted
# in a fresh process without the training stack; the answers must be training's own.

# Importing any of these while predicting a clip track fails (tensorflow_datasets is allowed:
# the builders' clip reader, tfds_builders/mer2026/clips.py, is built on it).
_CLIP_HEAVY = ("flax", "grain", "optax", "merjax.models", "merjax.tasks", "merjax.train")


@pytest.fixture(scope="module")
def clip_tfds(tmp_path_factory):
    """One TFDS folder for the three tracks: one demo release serves them all."""
    return tmp_path_factory.mktemp("clip_tfds")


def _clip_config(track, tfds_dir):
    import importlib
    config = importlib.import_module(f"configs.{track}").get_config("runlocal")
    config.data.tfds_dir = str(tfds_dir)
    config.total_steps = config.eval_every = config.checkpoint_every = config.log_every = 4
    config.mesh.devices = 1  # compiles in about half the time of the 8-device mesh
    config.reference.l2 = (1.0,)
    return config


def _clip_run(track, tfds_dir, tmp_path_factory):
    """(workdir, release root) of a trained and exported configs/<track>.py:runlocal run (two
    folds), cut to what a 2-core CI affords: the answers need to be the run's own, not good."""
    from merjax import tasks
    config = _clip_config(track, tfds_dir)
    workdir = tmp_path_factory.mktemp(f"{track}_run")
    train.run(config, str(workdir))
    train.run(config, str(workdir), mode="export")
    data = prepare.prepare(config, tasks.load(track), announce=False)
    return workdir, data.info.metadata["manual_dir"]


@pytest.fixture(scope="module")
def cross_run(clip_tfds, tmp_path_factory):
    return _clip_run("cross", clip_tfds, tmp_path_factory)


@pytest.fixture(scope="module")
def fg_run(clip_tfds, tmp_path_factory):
    return _clip_run("fg", clip_tfds, tmp_path_factory)


@pytest.fixture(scope="module")
def prefer_run(clip_tfds, tmp_path_factory):
    return _clip_run("prefer", clip_tfds, tmp_path_factory)


def _predict_clips(workdir, release, out, *extra):
    """Runs `python -m merjax.predict` on the run's exports in a fresh process where the
    training stack cannot be imported; returns the answer.csv it printed."""
    args = [f"--export_dir={workdir}", f"--input={release}", f"--output={out}",
            "--batch_size=5", *extra]
    assert _run_predict(_CLIP_HEAVY, args) == str(out / "answer.csv")
    return out / "answer.csv"


@pytest.mark.parametrize("track", ["cross", "fg", "prefer"])
def test_clip_track_predicts_training_answers_without_the_training_stack(track, request,
                                                                         tmp_path):
    workdir, release = request.getfixturevalue(f"{track}_run")
    folds = predict.find_exports(str(workdir))
    assert [os.path.basename(os.path.dirname(f)) for f in folds] == ["fold_0", "fold_1"]
    signature = predict.load_exports(str(workdir))[0][1]
    assert signature["clip_inputs"]["dataset"] == f"mer_{track}"
    assert signature["outputs"]["names"]
    answer = _predict_clips(workdir, release, tmp_path / "out")
    assert answer.read_bytes() == (workdir / "answer.csv").read_bytes()
    with zipfile.ZipFile(tmp_path / "out" / "answer.zip") as z:
        assert z.namelist() == ["answer.csv"]
        assert z.read("answer.csv") == answer.read_bytes()


def test_candidates_flag_answers_those_rows_in_their_order(cross_run, tmp_path):
    workdir, release = cross_run
    header, rows = _read(workdir / "answer.csv")
    picked = [rows[i] for i in (5, 0, 3, len(rows) - 1, 1)]
    with open(tmp_path / "few.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name"])
        writer.writerows([r[0]] for r in picked)
    answer = _predict_clips(workdir, release, tmp_path / "out",
                            f"--candidates={tmp_path / 'few.csv'}")
    assert _read(answer) == (header, picked)


def test_a_candidate_without_any_input_gets_the_no_input_answer(cross_run, tmp_path):
    """The builder's no-input rule, in process: a release copy in which one candidate lost
    every feature file, read with on_missing='skip' as a skip run's export would record."""
    import shutil
    workdir, release = cross_run
    root = shutil.copytree(release, tmp_path / "release")
    _, rows = _read(workdir / "answer.csv")
    loaded = predict.load_exports(str(workdir))
    majority = loaded[0][1]["no_input_label"]
    i = next(i for i, r in enumerate(rows) if r[1] != majority)  # the model said otherwise
    for npy in root.glob(f"features/*/{rows[i][0]}.npy"):
        npy.unlink()
    for _, signature in loaded:
        signature["clip_inputs"]["config"]["on_missing"] = "skip"
    path = predict.clip_predict(loaded, str(root), str(tmp_path / "out"), batch_size=4)
    _, answered = _read(path)
    assert answered == rows[:i] + [[rows[i][0], majority]] + rows[i + 1:]


def test_predict_mode_answers_another_candidate_file(prefer_run, clip_tfds, tmp_path):
    """--mode=predict with data.candidates (e.g. MER-Prefer's stage-2 candidates): the trained
    states answer the file's rows, in its order, repeats kept, without retraining or a rebuild
    (the prepared dataset and the checkpoints are untouched)."""
    workdir, _ = prefer_run
    header, rows = _read(workdir / "answer.csv")
    picked = [rows[i] for i in (3, 0, 3, len(rows) - 1)]
    with open(tmp_path / "stage2.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "a1", "a2"])
        writer.writerows(r[:3] for r in picked)
    config = _clip_config("prefer", clip_tfds)
    config.data.candidates = str(tmp_path / "stage2.csv")
    checkpoints = sorted(p.name for p in workdir.glob("fold_*/checkpoints/*"))
    assert train.run(config, str(workdir), mode="predict") == {}
    assert _read(workdir / "candidates" / "stage2" / "answer.csv") == (header, picked)
    with zipfile.ZipFile(workdir / "candidates" / "stage2" / "answer.zip") as z:
        assert z.namelist() == ["answer.csv"]
    assert sorted(p.name for p in workdir.glob("fold_*/checkpoints/*")) == checkpoints


def test_independent_release_moved_features_are_found_with_features_root(tmp_path):
    """A release written by another generator (tests/independent/cross_release.py), trained
    with an explicit data.features_root: after the feature folders move, predicting names the
    missing folder, and --features_root=<new place> answers exactly as training did."""
    import shutil
    from tests.independent import cross_release
    rel = cross_release.write_cross_release(tmp_path / "release", n_train=48, n_candidates=20,
                                            dims=(12, 20, 8), separation=1.0)
    config = _clip_config("cross", tmp_path / "tfds")
    config.data.manual_dir = str(rel.root)
    config.data.features_root = str(rel.features_root)
    config.data.features.audio, config.data.features.text, config.data.features.video = (
        rel.folders)
    workdir = tmp_path / "run"
    train.run(config, str(workdir))
    train.run(config, str(workdir), mode="export")
    moved = shutil.move(str(rel.features_root), str(tmp_path / "elsewhere"))
    with pytest.raises(Exception, match=str(rel.features_root)):
        predict.predict(str(workdir), str(rel.root), str(tmp_path / "lost"), batch_size=8)
    answer = _predict_clips(workdir, rel.root, tmp_path / "out", f"--features_root={moved}")
    assert answer.read_bytes() == (workdir / "answer.csv").read_bytes()
    _, rows = _read(answer)
    assert [r[0] for r in rows] == list(rel.candidates)
