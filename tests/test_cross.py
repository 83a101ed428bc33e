"""MER-Cross: seeded CV folds, logit averaging into answer.csv, missing inputs, and the CV run
end to end."""
import collections
import csv
import json
import logging
import types
import zipfile

import jax
import numpy as np
import pytest
from flax import nnx

from configs import cross as cross_config
from merjax import checkpoint, export, train
from merjax.data import prepare
from merjax.models import fusion
from merjax.tasks import cross
from merjax.train import FoldResult
from tfds_builders.common import ReleaseError
from tfds_builders.mer2026 import demo, write_demo_release


def _fake_data(n, no_input=(), candidates=3, majority=0):
    source = [dict(name=f"c{i}".encode(), label=i % 6, index=i) for i in range(n)]
    meta = dict(no_input=dict(train=[f"c{i}" for i in no_input], candidates=[]),
                csv_rows=dict(train=n, candidates=candidates), majority_label=majority)
    return types.SimpleNamespace(splits=dict(train=source, candidates=source[:candidates]),
                                 info=types.SimpleNamespace(metadata=meta))


def test_folds_are_seeded_disjoint_and_cover_train_once():
    config = cross_config.get_config()
    data = _fake_data(23)
    folds = cross.folds(config, data)
    assert [f.name for f in folds] == [f"fold_{i}" for i in range(5)]
    val = [list(f.validation.indices) for f in folds]
    assert sorted(sum(val, [])) == list(range(23))
    assert [len(v) for v in val] == [5, 5, 5, 4, 4]
    for f in folds:
        assert set(f.train.indices).isdisjoint(f.validation.indices)
        assert len(f.train) + len(f.validation) == 23
    again = [list(f.validation.indices) for f in cross.folds(config, data)]
    config.cv.seed = 1
    other = [list(f.validation.indices) for f in cross.folds(config, data)]
    assert val == again and val != other
    config.cv.folds = 1
    with pytest.raises(ValueError, match="cv.folds=1"):
        cross.folds(config, data)


def test_train_clips_without_any_input_are_left_out_of_every_fold():
    config = cross_config.get_config()
    folds = cross.folds(config, _fake_data(23, no_input=(4, 17)))
    val = sorted(int(i) for f in folds for i in f.validation.indices)
    assert val == [i for i in range(23) if i not in (4, 17)]
    for f in folds:
        assert not {4, 17} & set(f.train.indices.tolist())
        assert len(f.train) + len(f.validation) == 21
    # positions come from the records, so a stale metadata list is an error, not a guess
    data = _fake_data(23, no_input=(4,))
    data.info.metadata["no_input"]["train"].append("not-a-clip")
    with pytest.raises(RuntimeError, match="holds 1 of the 2 clips"):
        cross.folds(config, data)


def _candidate_data(no_input=(), majority=4, rows=3):
    meta = dict(no_input=dict(train=[], candidates=list(no_input)), majority_label=majority,
                csv_rows=dict(train=10, candidates=rows))
    return types.SimpleNamespace(info=types.SimpleNamespace(metadata=meta))


def test_candidate_logits_are_averaged_over_folds_in_candidate_order(tmp_path):
    ids = ["b", "c", "a"]  # split order; CSV rows say a, b, c
    kept = dict(row=np.array([1, 2, 0]), label=np.full(3, -1))
    fold0 = np.array([[0, 5, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]], np.float32)
    fold1 = np.array([[0, 0, 9, 0, 0, 0], [0, 0, 0, 4, 0, 0], [0, 0, 2, 0, 0, 0]], np.float32)
    results = [FoldResult("fold_0", 1, {}, ids, fold0, kept),
               FoldResult("fold_1", 1, {}, ids, fold1, kept)]
    cross.write_outputs(str(tmp_path), results, None, _candidate_data())
    rows = list(csv.reader(open(tmp_path / "answer.csv")))
    # mean logits: b -> [0,2.5,4.5,..] happy; c -> [1.5,0,0,2,..] sad; a -> happy
    assert rows == [["name", "discrete"], ["a", "happy"], ["b", "happy"], ["c", "sad"]]
    with zipfile.ZipFile(tmp_path / "answer.zip") as z:
        assert z.namelist() == ["answer.csv"]
        assert z.read("answer.csv") == (tmp_path / "answer.csv").read_bytes()
    saved = np.load(tmp_path / "candidate_logits.npz")
    assert saved["name"].tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(saved["logits"], (fold0 + fold1)[[2, 0, 1]] / 2)
    assert saved["answer"].tolist() == [2, 2, 3] and not saved["no_input"].any()

    # "c" has no input at all: answered with the majority class (4, worried), whatever its
    # logits say; its averaged logits are still kept.
    cross.write_outputs(str(tmp_path), results, None, _candidate_data(no_input=["c"]))
    rows = list(csv.reader(open(tmp_path / "answer.csv")))
    assert rows == [["name", "discrete"], ["a", "happy"], ["b", "happy"], ["c", "worried"]]
    saved = np.load(tmp_path / "candidate_logits.npz")
    assert saved["no_input"].tolist() == [False, False, True]
    assert saved["answer"].tolist() == [2, 2, 4]
    np.testing.assert_allclose(saved["logits"][2], (fold0[1] + fold1[1]) / 2)


def test_every_candidate_row_is_answered_or_nothing_is_written(tmp_path):
    kept = dict(row=np.array([0, 2]), label=np.full(2, -1))
    logits = np.zeros((2, 6), np.float32)
    results = [FoldResult("fold_0", 1, {}, ["a", "c"], logits, kept)]
    with pytest.raises(RuntimeError, match=r"cover 2 candidate rows.*has 3.*\[1\]"):
        cross.write_outputs(str(tmp_path), results, None, _candidate_data())
    other = FoldResult("fold_1", 1, {}, ["a"], logits[:1], dict(row=np.array([0])))
    with pytest.raises(RuntimeError, match="every fold must predict every candidate"):
        cross.write_outputs(str(tmp_path), results + [other], None, _candidate_data(rows=2))
    nan = FoldResult("fold_0", 1, {}, ["a", "b"], np.full((2, 6), np.nan, np.float32),
                     dict(row=np.array([0, 1]), label=np.full(2, -1)))
    with pytest.raises(FloatingPointError, match=r"2 candidates, e.g. row 0 \(a\)"):
        cross.write_outputs(str(tmp_path), [nan], None, _candidate_data(rows=2))
    assert not (tmp_path / "answer.csv").exists()


@pytest.mark.parametrize("input_kind", ["features", "raw"])
def test_cross_validation_end_to_end(input_kind, tmp_path_factory):
    tfds_dir = tmp_path_factory.getbasetemp() / "cross_tfds"
    workdir = tmp_path_factory.mktemp(f"cross_{input_kind}")
    config = cross_config.get_config(f"runlocal,input_kind={input_kind}")
    config.data.tfds_dir = str(tfds_dir)
    summary = train.run(config, str(workdir))

    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    per_fold = {}
    for line in lines:
        if "val/waf" in line:
            assert line["fold"] in (0, 1) and 0 <= line["val/waf"] <= 1
            per_fold.setdefault(line["fold"], []).append(line["val/waf"])
    assert sorted(per_fold) == [0, 1]
    # cv/waf is the mean over folds of each fold's best validation WAF.
    assert summary["cv/waf"] == pytest.approx(np.mean([max(v) for v in per_fold.values()]))
    assert lines[-1] == {"step": config.total_steps, **summary}

    (demo_root,) = (tfds_dir / "merjax_demo").glob("mer2026-*/release")
    with open(demo_root / "track1_track2_candidate.csv") as f:
        candidates = [r["name"] for r in csv.DictReader(f)]
    rows = list(csv.reader(open(workdir / "answer.csv")))
    assert rows[0] == ["name", "discrete"]
    assert [r[0] for r in rows[1:]] == candidates
    assert {r[1] for r in rows[1:]} <= set(cross.LABELS)
    assert (workdir / "answer.zip").exists()
    for fold in ("fold_0", "fold_1"):
        assert (workdir / fold / "checkpoints").is_dir() and (workdir / fold / "best").is_dir()

    if input_kind == "features":
        # --mode=evaluate measures the selected (best) states afresh: the training run's cv
        # scores, written to evaluate.json, not to the training history.
        history = (workdir / "metrics.jsonl").read_text()
        assert train.run(config, str(workdir), mode="evaluate") == pytest.approx(summary)
        assert json.loads((workdir / "evaluate.json").read_text())["cv/waf"] == pytest.approx(
            summary["cv/waf"])
        assert (workdir / "metrics.jsonl").read_text() == history
        # --mode=predict writes the same answer from the same states.
        answer = (workdir / "answer.csv").read_text()
        (workdir / "answer.csv").unlink()
        train.run(config, str(workdir), mode="predict")
        assert (workdir / "answer.csv").read_text() == answer

        # Each fold exports its best-validation state.
        train.run(config, str(workdir), mode="export")
        exported, params, signature = export.load(str(workdir / "fold_0" / "export"))
        assert signature["label_names"] == list(cross.LABELS)
        assert signature["output"]["shape"] == ["b", 6]
        best = checkpoint.Checkpointer(str(workdir / "fold_0"), subdir="best")
        assert signature["step"] == best.latest_step() and signature["fold"] == "fold_0"
        best.close()
        zeros = {k: np.zeros([3] + v["shape"][1:], v["dtype"])
                 for k, v in signature["inputs"].items()}
        assert np.asarray(exported.call(params, zeros)).shape == (3, 6)


def test_sharded_mesh_trains_like_one_device(tmp_path_factory):
    tfds_dir = tmp_path_factory.getbasetemp() / "cross_tfds"
    losses = {}
    for name, mesh in (("single", {"devices": 1}), ("sharded", dict(data=2, fsdp=2, model=2))):
        config = cross_config.get_config("runlocal")
        config.data.tfds_dir = str(tfds_dir)
        config.mesh.update(mesh)
        workdir = tmp_path_factory.mktemp(f"cross_{name}")
        train.run(config, str(workdir))
        lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [(l["fold"], l["train/loss"]) for l in lines if "train/loss" in l]
    assert [f for f, _ in losses["single"]] == [f for f, _ in losses["sharded"]]
    np.testing.assert_allclose([v for _, v in losses["sharded"]],
                               [v for _, v in losses["single"]], atol=1e-4)


def test_benchmark_reports_the_baseline_shapes(tmp_path):
    import os
    import subprocess
    import sys
    from tests.test_bench import check_profile
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "merjax.bench", "--config=configs/cross.py:bench", "--synthetic",
         "--steps=2", "--repeats=3", "--pipeline_batches=2", f"--profile={tmp_path / 'profile'}",
         "--profile_steps=2", "--profile_top=5",
         # Its batches gathered on the (8 CPU) devices, as on an accelerator by default.
         "--config.pipeline.device_cache_bytes=1000000000",
         "--quiet_wait_s=0"],  # the suite's other worker would hold it to its limit
        cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)  # the JSON line alone: it pipes into jq
    assert isinstance(report, dict) and proc.stdout.count("\n") == 1
    for key in ("flops_per_step", "matmul_flops_per_step", "bytes_accessed_per_step",
                "peak_memory_bytes_per_device", "param_bytes", "optimizer_bytes",
                "peak_flops_per_s", "mfu", "matmuls_alone_ms_per_step", "matmul_ceiling_mfu"):
        assert np.isfinite(report[key]) and report[key] > 0, key
    # Which matmuls set the ceiling: the costliest --profile_top, on stderr and in the JSON.
    matmuls = report["matmuls_alone"]
    assert 1 <= len(matmuls) <= 5 and all(" . " in m["op"] for m in matmuls)
    times = [m["ms_per_step"] for m in matmuls]
    assert times == sorted(times, reverse=True)
    assert sum(times) <= report["matmuls_alone_ms_per_step"] + 0.01  # rounded to 0.01 ms
    assert "the step's matmuls, each alone at its shapes:" in proc.stderr
    assert matmuls[0]["op"] in proc.stderr
    assert report["global_batch"] == 32 and report["params"] > 0
    assert report["input_shapes"]["audio"] == [1, 1024]
    assert report["input_shapes"]["text"] == [1, 1024]
    assert report["input_shapes"]["video"] == [1, 768]
    assert report["train_samples_per_s"] > 0 and report["pipeline_samples_per_s"] > 0
    assert report["pipeline_on_device"] is True
    # The command started again with huge pages requested where this host gives them on
    # request (merjax/hugepages.py), or kept what this environment already says.
    from merjax import hugepages
    assert report["host_hugepages"] == (hugepages.active() or hugepages.wanted())
    # The median of the three clean timed windows (of all, where fewer were clean), between
    # the slowest and the fastest.
    slowest, fastest = report["train_steps_per_s_range"]
    assert 0 < slowest <= report["train_steps_per_s"] <= fastest
    foreign = report["train_foreign_cpu"]
    assert 3 <= len(foreign) <= 9 and all(0 <= f <= 1 for f in foreign)
    assert report["train_contended"] == (sum(f < 0.05 for f in foreign) < 3)
    assert report["train_contended"] or sum(f < 0.05 for f in foreign) == 3
    # The CPU's peak: measured at start and again before each timed window, the best of them.
    measured = report["peak_flops_per_s_measured"]
    assert len(measured) == 1 + len(foreign) and min(measured) > 0
    assert report["peak_flops_per_s"] == pytest.approx(max(measured), rel=1e-3)
    assert report["mfu"] == pytest.approx(report["flops_per_step"] * report["train_steps_per_s"]
                                          / report["peak_flops_per_s"], rel=0.02)
    check_profile(report, proc.stderr, tmp_path / "profile", top=5)


# ------------------------------------------------------------------------------------------------
# Missing inputs: masked streams, no-input clips, and what the run reports

_FEATURES = {"audio": ("dense", 12, 1), "text": ("dense", 16, 1), "video": ("dense", 8, 3)}
_RAW = {"audio": ("mel", 10, 16), "faces": ("faces", 16, 4), "text": ("bytes", 0, 24)}


def _inputs(modalities, rng, n):
    batch = {}
    for m, (kind, dim, length) in modalities.items():
        shape = {"faces": (n, length, dim, dim, 3), "bytes": (n, length)}.get(kind,
                                                                            (n, length, dim))
        high = {"faces": 256, "bytes": 257}.get(kind)
        batch[m] = (rng.integers(0, high, shape).astype(np.uint8 if kind == "faces" else np.int32)
                    if high else rng.normal(size=shape).astype(np.float32))
        batch[f"{m}_mask"] = np.ones((n, length), bool)
    return batch


@pytest.mark.parametrize("fusion_kind", ["joint", "bottleneck"])
def test_an_example_with_every_input_masked_gives_finite_logits_and_gradients(fusion_kind):
    """A no-input clip (every length 0) reaches the model as all-false masks: joint fusion keeps
    its CLS token, bottleneck fusion gives every absent stream zero weight; neither may divide
    by zero, and the hidden inputs must not leak into the logits."""
    config = cross_config.get_config()
    predict = nnx.jit(lambda m, b: m(b))  # compiled once per model: eager dispatch is slow
    for modalities in (_FEATURES, _RAW):
        with nnx.use_eager_sharding(False):
            model = fusion.FusionTransformer(
                modalities=modalities, width=32, depth=2, heads=2, mlp_dim=64, dropout=0.1,
                num_classes=6, fusion=fusion_kind, bottlenecks=2, modality_dropout=0.5,
                rngs=nnx.Rngs(params=0))
        batch = _inputs(modalities, np.random.default_rng(0), 4)
        for m in modalities:  # examples 0 and 1 have no input; 2 and 3 keep everything
            batch[f"{m}_mask"][:2] = False
        logits = np.asarray(predict(model, batch))
        assert np.isfinite(logits).all()
        other = _inputs(modalities, np.random.default_rng(1), 4)
        other.update({k: v for k, v in batch.items() if k.endswith("_mask")})
        moved = np.asarray(predict(model, other))
        np.testing.assert_allclose(moved[:2], logits[:2], atol=1e-5)  # hidden: no effect
        np.testing.assert_allclose(moved[0], moved[1], atol=1e-5)     # nothing else to see
        assert not np.allclose(moved[2:], logits[2:])                 # visible ones count
    # Training mode too (dropout, modality dropout), for the last model: the loss and every
    # gradient stay finite (a partly missing clip can lose its last stream to modality dropout).
    batch["label"] = np.array([0, 1, 2, 3], np.int32)
    (value, _), grads = nnx.jit(nnx.value_and_grad(
        lambda m, b: cross.loss(m, b, config, nnx.Rngs(dropout=0)), has_aux=True))(model, batch)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(nnx.state(grads)))


def test_transform_masks_follow_the_stored_lengths():
    spec = {"audio": (7, 10), "faces": (4, 16), "text_bytes": (24,)}
    features = {k: types.SimpleNamespace(shape=v) for k, v in spec.items()}
    features["text"] = types.SimpleNamespace(shape=())
    data = types.SimpleNamespace(info=types.SimpleNamespace(features=features))
    assert cross.modalities(None, data) == {"audio": ("mel", 10, 8), "faces": ("faces", 16, 4),
                                           "text": ("bytes", 0, 24)}
    transform = cross.make_transform(None, data)
    text = "情绪".encode()
    example = dict(label=3, index=5, audio=np.ones((7, 10), np.float32), audio_length=5,
                   faces=np.ones((4, 16, 16, 3), np.uint8), faces_length=0,
                   text_bytes=np.pad(np.frombuffer(text, np.uint8), (0, 24 - len(text))),
                   text_length=len(text))
    out = transform(example)
    assert out["audio"].shape == (8, 10) and out["audio_mask"].tolist() == [1] * 5 + [0] * 3
    assert not out["faces_mask"].any()                             # faces_length 0
    assert out["text_mask"].tolist() == [1] * 6 + [0] * 18
    assert (out["label"], out["row"]) == (3, 5)
    none = transform(dict(example, audio_length=0, text_length=0,
                          text_bytes=np.zeros(24, np.uint8)))
    assert not (none["audio_mask"].any() or none["faces_mask"].any() or none["text_mask"].any())


def _damaged_release(base):
    """A tiny release written as 'real' (no demo marker) in which some clips miss inputs:
    candidates 0 and train 0 miss everything, candidate 1 its video, candidate 2 its audio (an
    empty (0, D) file), train 1 its text."""
    root = write_demo_release(base / "release", seed=3, scale=0.5)
    (root / demo.DEMO_MARKER).unlink()
    feats = root / "features"
    hubert, bert, clip = ("chinese-hubert-base-UTT", "chinese-macbert-large-UTT",
                          "clip-vit-large-patch14-UTT")
    with open(root / "track1_train.csv") as f:
        train = list(csv.DictReader(f))
    with open(root / "track1_track2_candidate.csv") as f:
        cands = [r["name"] for r in csv.DictReader(f)]
    for folder in (hubert, bert, clip):
        (feats / folder / f"{cands[0]}.npy").unlink()
        (feats / folder / f"{train[0]['name']}.npy").unlink()
    (feats / clip / f"{cands[1]}.npy").unlink()
    np.save(feats / hubert / f"{cands[2]}.npy", np.zeros((0, 768), np.float32))
    (feats / bert / f"{train[1]['name']}.npy").unlink()
    return root, train, cands


def test_skip_answers_every_candidate_and_reports_missing_inputs(tmp_path, caplog):
    root, train_rows, cands = _damaged_release(tmp_path)
    config = cross_config.get_config("runlocal")
    config.data.update(manual_dir=str(root), tfds_dir=str(tmp_path / "tfds"))
    with pytest.raises(ReleaseError, match=r"found 4 name\(s\) with something missing"):
        train.run(config, str(tmp_path / "error"))             # on_missing=error: a ReleaseError
    assert not (tmp_path / "error" / "answer.csv").exists()

    config.data.on_missing = "skip"
    config.total_steps = 4
    workdir = tmp_path / "skip"
    with caplog.at_level(logging.WARNING):
        train.run(config, str(workdir))

    # every candidate row, in candidate-file order; no input at all -> the majority class
    rows = list(csv.reader(open(workdir / "answer.csv")))
    assert rows[0] == ["name", "discrete"] and [r[0] for r in rows[1:]] == cands
    counts = collections.Counter(r["discrete"] for r in train_rows)
    majority = max(cross.LABELS, key=lambda k: (counts[k], -cross.LABELS.index(k)))
    assert rows[1][1] == majority
    assert {r[1] for r in rows[1:]} <= set(cross.LABELS)
    saved = np.load(workdir / "candidate_logits.npz")
    assert saved["name"].tolist() == cands and saved["logits"].shape == (len(cands), 6)
    assert np.isfinite(saved["logits"]).all()
    assert saved["no_input"].tolist() == [True] + [False] * (len(cands) - 1)
    assert [cross.LABELS[i] for i in saved["answer"]] == [r[1] for r in rows[1:]]
    assert (saved["answer"][1:] == saved["logits"][1:].argmax(-1)).all()

    # counted in metrics.jsonl (step 0) and one WARNING line per split
    first = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0
    assert {k: first[k] for k in first if k.startswith("data/")} == {
        "data/train_examples": len(train_rows), "data/candidates_examples": len(cands),
        "data/train_missing_audio": 1, "data/train_missing_text": 2,
        "data/train_missing_video": 1, "data/train_no_input": 1,
        "data/candidates_missing_audio": 2, "data/candidates_missing_text": 1,
        "data/candidates_missing_video": 2, "data/candidates_no_input": 1}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for split, size, fate in (("train", len(train_rows), "left out of training and validation"),
                              ("candidates", len(cands), f"answered {majority!r}")):
        lines = [w for w in warned if w.startswith(f"MER-Cross {split}: {size} clips, missing")]
        assert len(lines) == 1 and fate in lines[0], warned

    # the train clip without any input is in no fold; the folds cover every other one once
    data = prepare.prepare(config, cross, announce=False)   # the records built above
    folds = cross.folds(config, data)
    train_split = data.splits["train"]
    validated = [train_split[int(i)]["name"].decode() for f in folds for i in f.validation.indices]
    assert sorted(validated) == sorted(r["name"] for r in train_rows[1:])
