"""MER-Cross (track 1) TFDS builder on a tiny demo release, plus its numpy feature helpers.

Expected values are recomputed from the release files with csv/numpy/soundfile (an explicit DFT
for the log-mel), not through the builder's own code paths.
"""
import csv
import pathlib
import shutil

import numpy as np
import pytest
import soundfile as sf

from merjax.data import prepare
from tfds_builders import features
from tfds_builders.mer2026 import TRACK1_LABELS, ReleaseError, demo, write_demo_release
from tfds_builders.mer_cross import mer_cross_dataset_builder as mc
from tests.clip_builders import build_cache, read_csv

TINY = dict(seed=0, scale=0.01, num_track1_train=12, num_candidates=4, face_frames=(3, 10))
HUBERT, BERT, CLIP = mc.FEATURE_DIRS
FRA = demo.DEMO_FRAME_FEATURE
UTT = mc.make_config(release="demo")
FRAME = mc.make_config(release="demo", feature_level="frame", max_frames=12,
                       feature_dirs=(FRA, BERT, CLIP))
RAW = mc.make_config(release="demo", input_kind="raw", max_audio_s=1.5, max_text_bytes=44)
RAW112 = mc.make_config(release="demo", input_kind="raw", face_size=112, num_faces=5)
SPLITS = ("train", "candidates")


@pytest.fixture(scope="session")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("mer_cross_release")
    return (write_demo_release(base / "flat", **TINY),
            write_demo_release(base / "nested", layout="nested", **TINY))


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    return build_cache(mc.Builder, tmp_path_factory)


@pytest.fixture(scope="session")
def records(roots, build):
    """records(config, layout='flat') -> {split: {name: example}}."""
    cache = {}

    def _records(config, layout="flat"):
        if (config.name, layout) not in cache:
            builder = build(roots[layout == "nested"], config)
            out = {}
            for split in SPLITS:
                source = builder.as_data_source(split)
                out[split] = {ex["name"].decode(): ex
                              for ex in (source[i] for i in range(len(source)))}
            cache[config.name, layout] = out
        return cache[config.name, layout]
    return _records


@pytest.fixture
def broken(roots, tmp_path):
    """A private copy of the flat release, for tests that damage it."""
    return pathlib.Path(shutil.copytree(roots[0], tmp_path / "release"))


def _build_fails(root, config, tmp_path, match):
    """The build raises ReleaseError matching every pattern, before any record is written."""
    data_dir = tmp_path / "tfds_fail"
    with pytest.raises(ReleaseError) as err:
        prepare.build(mc.Builder, config, manual_dir=root, data_dir=data_dir, num_shards=2)
    for pattern in match:
        assert pattern in str(err.value), (pattern, str(err.value))
    assert not list(data_dir.rglob("*.array_record*"))
    return str(err.value)


def _log_mel_reference(wave, n_mels=80):
    """Explicit framing + DFT matrix (no FFT, no stride tricks) + librosa's Slaney filters."""
    import librosa
    padded = np.concatenate([np.zeros(200), wave.astype(np.float64), np.zeros(200)])
    count = 1 + len(wave) // 160
    frames = np.stack([padded[i * 160:i * 160 + 400] for i in range(count)])
    window = np.hanning(401)[:-1]
    k = np.arange(201)[:, None] * np.arange(400)[None, :]
    dft = np.exp(-2j * np.pi * k / 400)
    power = np.abs((frames * window) @ dft.T) ** 2
    bank = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)
    return np.log(power @ bank.T + 1e-6)


# ------------------------------------------------------------------------------------------------
# Splits, labels, order

@pytest.mark.parametrize("config", [UTT, RAW], ids=["features", "raw"])
def test_splits_match_the_csvs_with_labels_by_name_and_candidate_order(roots, records, config):
    train_rows = read_csv(roots[0] / "track1_train.csv")
    cand_rows = read_csv(roots[0] / "track1_track2_candidate.csv")
    recs = records(config)
    assert (len(recs["train"]), len(recs["candidates"])) == (len(train_rows), len(cand_rows))
    assert (len(train_rows), len(cand_rows)) == (12, 4)
    for i, row in enumerate(train_rows):
        ex = recs["train"][row["name"]]
        assert ex["label"] == TRACK1_LABELS.index(row["discrete"]) and ex["index"] == i
    assert {ex["label"] for ex in recs["train"].values()} == set(range(6))
    restored = sorted(recs["candidates"].values(), key=lambda ex: ex["index"])
    assert [ex["name"].decode() for ex in restored] == [r["name"] for r in cand_rows]
    assert [ex["index"] for ex in restored] == [0, 1, 2, 3]
    assert all(ex["label"] == -1 for ex in restored)


# ------------------------------------------------------------------------------------------------
# Features kind

def test_utt_features_are_the_time_mean_of_each_npy(roots, records):
    recs = records(UTT)
    for split in SPLITS:
        for name, ex in recs[split].items():
            for role, folder, dim in zip(mc.ROLES, mc.FEATURE_DIRS, mc.FEATURE_DIMS):
                raw = np.load(roots[0] / "features" / folder / f"{name}.npy")
                assert raw.shape == (dim,)
                assert ex[role].shape == (1, dim) and ex[role].dtype == np.float32
                np.testing.assert_allclose(ex[role][0], raw.reshape(-1, dim).mean(0), rtol=1e-6)
    # the UTT of the demo's hubert is the mean of its frame file: read straight from the FRA npy
    name = next(iter(recs["train"]))
    frames = np.load(roots[0] / "features" / FRA / f"{name}.npy")
    assert frames.ndim == 2 and frames.shape[0] >= 10
    np.testing.assert_allclose(recs["train"][name]["audio"][0], frames.mean(0), rtol=1e-5,
                               atol=1e-6)


def test_frame_features_are_adjacent_averages_of_at_most_max_frames(roots, records):
    recs = records(FRAME)
    lengths = set()
    for split in SPLITS:
        for name, ex in recs[split].items():
            x = np.load(roots[0] / "features" / FRA / f"{name}.npy").astype(np.float64)
            t = len(x)
            lengths.add(t)
            if t <= 12:
                expected = x
            else:                  # groups of ceil(t/12) frames, aligned to the end
                size = -(-t // 12)
                bounds = list(range(t, 0, -size))[::-1]
                expected = np.stack([x[max(0, b - size):b].mean(0) for b in bounds])
            # Fixed (max_frames, D), zero-padded at the end; the length counts the real frames.
            assert ex["audio"].dtype == np.float32 and ex["audio"].shape == (12, 768)
            assert ex["audio_length"] == len(expected) <= 12, (t, ex["audio_length"])
            np.testing.assert_allclose(ex["audio"][:len(expected)], expected, rtol=1e-5,
                                       atol=1e-6)
            assert not ex["audio"][len(expected):].any()
            # utterance-level folders at the frame level: one real frame, then zeros
            assert ex["text"].shape == (12, 1024) and ex["video"].shape == (12, 768)
            assert ex["text_length"] == ex["video_length"] == 1
            assert ex["text"][0].any() and not ex["text"][1:].any()
    assert min(lengths) <= 12 < max(lengths)          # both branches exercised


# ------------------------------------------------------------------------------------------------
# Raw kind

def test_raw_audio_is_log_mel_of_the_centre_cropped_wav(roots, records):
    recs = records(RAW)
    cropped = 0
    for split in SPLITS:
        for name, ex in recs[split].items():
            n = sf.info(str(roots[0] / "audio" / f"{name}.wav")).frames
            # (1 + 1.5 s * 100, 80) for every clip; audio_length counts the real frames
            assert ex["audio"].dtype == np.float32 and ex["audio"].shape == (151, 80)
            assert ex["audio_length"] == 1 + min(n, 24000) // 160
            assert not ex["audio"][ex["audio_length"]:].any()
            cropped += n > 24000
    assert 0 < cropped < 16
    long_name = next(n for n in recs["train"]
                     if sf.info(str(roots[0] / "audio" / f"{n}.wav")).frames > 24000)
    for name in (long_name, next(iter(recs["candidates"]))):
        wave, sr = sf.read(str(roots[0] / "audio" / f"{name}.wav"), dtype="float32")
        assert sr == 16000
        start = max(0, (len(wave) - 24000) // 2)
        expected = _log_mel_reference(wave[start:start + 24000])
        split = "train" if name in recs["train"] else "candidates"
        np.testing.assert_allclose(recs[split][name]["audio"][:len(expected)], expected,
                                   atol=2e-3)


def test_raw_faces_are_rgb_at_the_sampled_indices(roots, records):
    full, small = records(RAW112), records(RAW)
    seen = set()
    for split in SPLITS:
        for name, ex in full[split].items():
            bgr = np.load(roots[0] / "openface_face" / name / f"{name}.npy")
            t = len(bgr)
            seen.add(t < 5)
            idx = [min(t - 1, int((k + 0.5) * t / 5)) for k in range(5)]
            assert ex["faces"].shape == (5, 112, 112, 3) and ex["faces"].dtype == np.uint8
            assert ex["faces_length"] == 5
            np.testing.assert_array_equal(ex["faces"], bgr[idx][..., ::-1])
            # 48 px: area resize keeps each channel's mean (8 faces, indices of 8 segments)
            faces48 = small[split][name]["faces"]
            assert faces48.shape == (8, 48, 48, 3) and faces48.dtype == np.uint8
            idx8 = [min(t - 1, int((k + 0.5) * t / 8)) for k in range(8)]
            np.testing.assert_allclose(faces48.mean(axis=(1, 2)),
                                       bgr[idx8][..., ::-1].mean(axis=(1, 2)), atol=0.3)
    assert seen == {True, False}                       # T < k (repeats) and T >= k both built


def test_raw_text_is_the_chinese_subtitle_cut_on_a_character_boundary(roots, records):
    subs = {r["name"]: r["chinese"] for r in read_csv(roots[0] / "subtitle_chieng.csv")}
    recs = records(RAW)
    cut = 0
    for split in SPLITS:
        for name, ex in recs[split].items():
            full, text = subs[name].encode(), ex["text"]
            assert full.startswith(text) and len(text) <= 44
            text.decode("utf-8")                       # never half a character
            assert ex["text_bytes"].shape == (44,) and ex["text_length"] == len(text)
            assert ex["text_bytes"][:len(text)].tobytes() == text
            assert not ex["text_bytes"][len(text):].any()
            if len(full) > 44:
                cut += 1
                assert len(text) > 44 - 3              # the longest whole-character prefix
            else:
                assert text == full
    assert 0 < cut < 16


def test_nested_layout_builds_the_same_examples_as_flat(records):
    flat, nested = records(RAW, "flat"), records(RAW, "nested")
    for split in SPLITS:
        assert flat[split].keys() == nested[split].keys()
        for name, ex in flat[split].items():
            for key, value in ex.items():
                np.testing.assert_array_equal(nested[split][name][key], value)


def test_metadata(roots, build):
    meta = build(roots[0], UTT).info.metadata
    assert meta["release"] == "demo" and meta["input_kind"] == "features"
    assert meta["manual_dir"] == str(roots[0])
    assert meta["features_root"] == str(roots[0] / "features")
    assert meta["feature_dirs"] == dict(zip(mc.ROLES, mc.FEATURE_DIRS))
    assert meta["label_names"] == list(TRACK1_LABELS)
    assert meta["counts"] == meta["csv_rows"] == {"train": 12, "candidates": 4}
    assert meta["on_missing"] == "error" and meta["inputs"] == ["audio", "text", "video"]
    assert meta["missing"] == {"train": {}, "candidates": {}}
    assert meta["num_missing"] == {s: {"audio": 0, "text": 0, "video": 0} for s in SPLITS}
    assert meta["no_input"] == {"train": [], "candidates": []}
    assert meta["num_no_input"] == {"train": 0, "candidates": 0}
    labels = [r["discrete"] for r in read_csv(roots[0] / "track1_train.csv")]
    assert meta["train_label_counts"] == {k: labels.count(k) for k in TRACK1_LABELS}
    counts = [labels.count(k) for k in TRACK1_LABELS]
    assert meta["majority_label"] == counts.index(max(counts))  # first of the most frequent
    raw = build(roots[0], RAW).info.metadata
    assert raw["input_kind"] == "raw" and raw["features_root"] is None
    assert raw["audio"]["max_audio_s"] == 1.5 and raw["audio"]["hop_length"] == 160
    assert raw["inputs"] == ["audio", "faces", "text"]


# ------------------------------------------------------------------------------------------------
# Configs

def test_config_names_and_instances():
    assert mc.make_config(release="demo") is UTT is mc.Builder.BUILDER_CONFIGS[1]
    assert mc.make_config(release="demo", n_mels=64, max_frames=7) is UTT  # unused fields reset
    assert UTT.name.startswith("demo_features_utt_") and len(UTT.name) == 26
    assert FRAME.name.startswith("demo_features_frame12_") and FRAME.name[-8:] != UTT.name[-8:]
    assert RAW.name == "demo_raw_mel80_a1p5s_f8x48_zh44"
    assert mc.make_config(input_kind="raw").name == "real_raw_mel80_a8s_f8x48_zh256"
    assert mc.make_config(release="demo", on_missing="skip").name == UTT.name + "_skip"
    other = mc.make_config(release="demo", feature_dims=(768, 1024, 512))
    assert other.name != UTT.name and other.name[:18] == UTT.name[:18]
    assert mc.make_config(release="demo", features_root="/x").name != UTT.name
    with pytest.raises(ValueError, match="does not match"):
        mc.CrossConfig(name="mine", release="demo")
    for bad in (dict(input_kind="video"), dict(feature_dirs=("a", "b")), dict(num_faces=0),
                dict(text_language="french"), dict(feature_dirs=("a/b", "c", "d"))):
        with pytest.raises(ValueError):
            mc.CrossConfig(**bad)


# ------------------------------------------------------------------------------------------------
# Bad inputs: each is an error naming the file, raised before anything is written

def test_release_kind_mismatch(roots, broken, tmp_path):
    _build_fails(roots[0], mc.make_config(), tmp_path, ["demo release", "release='real'"])
    (broken / demo.DEMO_MARKER).unlink()
    _build_fails(broken, UTT, tmp_path, ["expected a generated demo release", "found none"])


def _skip(config):
    """The same config with on_missing='skip'."""
    fields = ("input_kind", "release", "max_audio_s", "max_text_bytes")
    return mc.make_config(**{f: getattr(config, f) for f in fields}, on_missing="skip")


def _examples(builder, split):
    source = builder.as_data_source(split)
    return {source[i]["name"].decode(): source[i] for i in range(len(source))}


def _names(root):
    return ([r["name"] for r in read_csv(root / "track1_train.csv")],
            [r["name"] for r in read_csv(root / "track1_track2_candidate.csv")])


def _drop_subtitles(root, names):
    rows = [r for r in read_csv(root / "subtitle_chieng.csv") if r["name"] not in names]
    with open(root / "subtitle_chieng.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["name", "chinese", "english"])
        writer.writeheader()
        writer.writerows(rows)


def test_missing_files_are_errors_or_zeros_with_length_0(broken, tmp_path):
    train, cands = _names(broken)
    (broken / "audio" / f"{train[3]}.wav").unlink()
    np.save(broken / "openface_face" / cands[1] / f"{cands[1]}.npy",
            np.zeros((0, 112, 112, 3), np.uint8))
    (broken / "features" / CLIP / f"{cands[2]}.npy").unlink()

    _build_fails(broken, RAW, tmp_path, ["audio: 1 of 16 names missing", str(broken / "audio"),
                                         train[3]])
    message = _build_fails(broken, UTT, tmp_path, [f"features/{CLIP}: 1 of 16 names missing",
                                                   str(broken / "features" / CLIP), cands[2]])
    assert train[3] not in message
    # the wav is missing first; once restored, the empty face npy is the next error
    shutil.copy(broken / "audio" / f"{train[4]}.wav", broken / "audio" / f"{train[3]}.wav")
    _build_fails(broken, RAW, tmp_path, ["found 1 of 16 names with T=0", cands[1],
                                         "on_missing=skip"])
    (broken / "audio" / f"{train[3]}.wav").unlink()

    # skip: every CSV row is written; the missing input is zeros with length 0
    raw = prepare.build(mc.Builder, _skip(RAW), manual_dir=broken, data_dir=tmp_path / "raw",
                        num_shards=2)
    meta = raw.info.metadata
    assert meta["missing"] == {"train": {train[3]: {"audio": mc.NO_FILE}},
                               "candidates": {cands[1]: {"faces": mc.EMPTY_FILE}}}
    assert meta["num_missing"] == {"train": {"audio": 1, "faces": 0, "text": 0},
                                   "candidates": {"audio": 0, "faces": 1, "text": 0}}
    assert meta["num_no_input"] == {"train": 0, "candidates": 0}
    assert meta["counts"] == meta["csv_rows"] == {"train": 12, "candidates": 4}
    recs = {split: _examples(raw, split) for split in SPLITS}
    assert {n: ex["index"] for n, ex in recs["train"].items()} == {n: i for i, n in
                                                                  enumerate(train)}
    assert sorted(ex["index"] for ex in recs["candidates"].values()) == [0, 1, 2, 3]
    silent, faceless = recs["train"][train[3]], recs["candidates"][cands[1]]
    assert silent["audio"].shape == (151, 80) and silent["audio_length"] == 0
    assert not silent["audio"].any()
    assert silent["faces_length"] == 8 and silent["faces"].any() and silent["text_length"] > 0
    assert faceless["faces"].shape == (8, 48, 48, 3) and faceless["faces_length"] == 0
    assert not faceless["faces"].any() and faceless["audio_length"] > 0
    for split in SPLITS:
        for name, ex in recs[split].items():
            if name not in (train[3], cands[1]):
                assert ex["audio_length"] > 0 and ex["faces_length"] == 8, name

    feats = prepare.build(mc.Builder, _skip(UTT), manual_dir=broken,
                          data_dir=tmp_path / "feats", num_shards=2)
    assert feats.info.metadata["missing"] == {"train": {},
                                              "candidates": {cands[2]: {"video": mc.NO_FILE}}}
    blind = _examples(feats, "candidates")[cands[2]]
    assert feats.info.splits["candidates"].num_examples == 4
    assert blind["video"].shape == (1, 768) and not blind["video"].any()
    assert (blind["audio_length"], blind["text_length"], blind["video_length"]) == (1, 1, 0)
    assert blind["audio"].any() and blind["text"].any()


def test_clip_without_any_input_is_written_with_every_length_0(broken, tmp_path):
    train, cands = _names(broken)
    lost = (train[0], cands[3])
    for name in lost:
        (broken / "audio" / f"{name}.wav").unlink()
        shutil.rmtree(broken / "openface_face" / name)
        for folder in mc.FEATURE_DIRS:
            (broken / "features" / folder / f"{name}.npy").unlink()
    _drop_subtitles(broken, lost)
    for config, why in ((RAW, {"audio": mc.NO_FILE, "faces": mc.NO_FILE,
                               "text": mc.NO_SUBTITLE}),
                        (UTT, {role: mc.NO_FILE for role in mc.ROLES})):
        message = _build_fails(broken, config, tmp_path, ["2 name(s) with something missing"])
        assert train[0] in message and cands[3] in message
        builder = prepare.build(mc.Builder, _skip(config), manual_dir=broken,
                                data_dir=tmp_path / config.input_kind, num_shards=2)
        meta = builder.info.metadata
        assert meta["no_input"] == {"train": [train[0]], "candidates": [cands[3]]}
        assert meta["num_no_input"] == {"train": 1, "candidates": 1}
        assert meta["missing"] == {"train": {train[0]: why}, "candidates": {cands[3]: why}}
        assert meta["counts"] == {"train": 12, "candidates": 4}
        for split, name in (("train", train[0]), ("candidates", cands[3])):
            ex = _examples(builder, split)[name]
            assert [ex[f"{k}_length"] for k in meta["inputs"]] == [0, 0, 0]
            arrays = ["audio", "faces", "text_bytes"] if config is RAW else list(mc.ROLES)
            assert not any(ex[k].any() for k in arrays), name
        if config is RAW:
            assert _examples(builder, "candidates")[cands[3]]["text"] == b""


def test_empty_inputs_are_missing_inputs(broken, tmp_path):
    """A (0, D) feature or an empty <name>/ frame folder would average to NaN; an empty wav
    has nothing to hear: each is a missing input, never a record of NaNs or silence."""
    train, _ = _names(broken)
    hubert = broken / "features" / HUBERT / f"{train[1]}.npy"
    np.save(hubert, np.zeros((0, 768), np.float32))
    (broken / "features" / BERT / f"{train[2]}.npy").unlink()
    frames = broken / "features" / BERT / train[2]
    frames.mkdir()
    _build_fails(broken, UTT, tmp_path, [str(hubert), str(frames), "2 empty one(s) (T = 0",
                                         "on_missing=skip"])
    feats = prepare.build(mc.Builder, _skip(UTT), manual_dir=broken,
                          data_dir=tmp_path / "feats", num_shards=2)
    assert feats.info.metadata["missing"]["train"] == {train[1]: {"audio": mc.EMPTY_FILE},
                                                       train[2]: {"text": mc.EMPTY_FILE}}
    recs = _examples(feats, "train")
    assert recs[train[1]]["audio_length"] == 0 and not recs[train[1]]["audio"].any()
    assert recs[train[2]]["text_length"] == 0 and not recs[train[2]]["text"].any()
    assert all(np.isfinite(ex[r]).all() for ex in recs.values() for r in mc.ROLES)

    wav = broken / "audio" / f"{train[5]}.wav"
    sf.write(str(wav), np.zeros(0, np.float32), 16000)
    _build_fails(broken, RAW, tmp_path, ["found 1 of 16 names with 0 samples", str(wav)])
    raw = prepare.build(mc.Builder, _skip(RAW), manual_dir=broken, data_dir=tmp_path / "raw",
                        num_shards=2)
    assert raw.info.metadata["missing"]["train"] == {train[5]: {"audio": mc.EMPTY_FILE}}
    assert _examples(raw, "train")[train[5]]["audio_length"] == 0


def test_skip_never_hides_a_whole_missing_source(broken, tmp_path):
    train, _ = _names(broken)
    for name in train:  # no train clip has any feature: nothing to train on
        for folder in mc.FEATURE_DIRS:
            (broken / "features" / folder / f"{name}.npy").unlink()
    _build_fails(broken, _skip(UTT), tmp_path, [str(broken / "track1_train.csv"),
                                                "every one of the 12 train clips misses every "
                                                "input"])
    shutil.rmtree(broken / "features" / CLIP)  # a misnamed folder: no name has it
    _build_fails(broken, _skip(UTT), tmp_path, [str(broken / "features" / CLIP),
                                                f"expected features/{CLIP} for at least some "
                                                f"of the 16 names, found none"])


def test_feature_dim_outlier_and_config_dims_mismatch(roots, broken, tmp_path):
    name = read_csv(broken / "track1_train.csv")[5]["name"]
    path = broken / "features" / BERT / f"{name}.npy"
    np.save(path, np.zeros(512, np.float32))
    _build_fails(broken, UTT, tmp_path,
                 [str(path), "has D=512", "the folder's D=1024", str(broken / "features" / BERT)])
    _build_fails(roots[0], mc.make_config(release="demo", feature_dims=(768, 1024, 512)),
                 tmp_path, [str(roots[0] / "features" / CLIP), "expected the video feature dim "
                            "D=512", "found D=768", f"{CLIP}/"])


def test_corrupt_wav(broken, tmp_path):
    name = read_csv(broken / "track1_track2_candidate.csv")[0]["name"]
    path = broken / "audio" / f"{name}.wav"
    path.write_bytes(b"RIFF\x00\x00garbage" * 10)
    _build_fails(broken, RAW, tmp_path, [str(path), "expected a readable 16000 Hz mono wav",
                                         "found a corrupt or unsupported file"])


def test_corrupt_npy(broken, tmp_path):
    name = read_csv(broken / "track1_train.csv")[0]["name"]
    feature = broken / "features" / HUBERT / f"{name}.npy"
    feature.write_bytes(b"\x93NUMPY not really" * 4)
    _build_fails(broken, UTT, tmp_path, [str(feature), "in .npy format",
                                         "found a corrupt or unreadable file"])
    faces = broken / "openface_face" / name / f"{name}.npy"
    faces.write_bytes(faces.read_bytes()[:-1000])
    _build_fails(broken, RAW, tmp_path, [str(faces), "found a truncated file",
                                         "bytes for shape"])


def test_empty_subtitle_builds_as_empty_text(broken, tmp_path):
    rows = read_csv(broken / "subtitle_chieng.csv")
    name = read_csv(broken / "track1_train.csv")[2]["name"]
    with open(broken / "subtitle_chieng.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["name", "chinese", "english"])
        writer.writeheader()
        writer.writerows({**r, "chinese": ""} if r["name"] == name else r for r in rows)
    builder = prepare.build(mc.Builder, RAW, manual_dir=broken, data_dir=tmp_path / "t",
                              num_shards=2)
    source = builder.as_data_source("train")
    texts = {source[i]["name"].decode(): source[i]["text"] for i in range(len(source))}
    assert texts[name] == b"" and sum(t == b"" for t in texts.values()) == 1


# ------------------------------------------------------------------------------------------------
# Feature helpers (tfds_builders.features)

def test_feature_helpers():
    t = np.arange(16000) / 16000
    mel = features.log_mel_spectrogram(np.sin(2 * np.pi * 440 * t).astype(np.float32))
    assert mel.shape == (101, 80) and mel.mean(0).argmax() == 11
    assert features.log_mel_spectrogram(np.zeros(0, np.float32)).shape == (1, 80)
    x = np.arange(33.0)[:, None] * [1.0, 2.0]
    pooled = features.pool_frames(x, 32)               # scale 2 -> 17 frames, first one alone
    assert pooled.shape == (17, 2) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled[:3, 0], [0.0, 1.5, 3.5])
    np.testing.assert_array_equal(features.pool_frames(x[:5], 32), x[:5])
    img = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    blocks = np.rint(img.reshape(2, 56, 2, 56, 2, 3).mean(axis=(2, 4)))
    np.testing.assert_array_equal(features.resize_area(img, 56), blocks)
    np.testing.assert_array_equal(features.resize_area(img, 112), img)
    assert features.truncate_utf8("我们今天", 7) == "我们" and features.truncate_utf8("ab", 5) == "ab"
    np.testing.assert_array_equal(features.utf8_bytes(b"ab\xe6\x88\x91", 4), [97, 98])
    np.testing.assert_array_equal(features.centre_crop(np.arange(7), 4), [1, 2, 3, 4])
