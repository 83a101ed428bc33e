"""MER-Prefer (track 3) TFDS builder on a tiny demo release.

Expected values are recomputed from the release files with csv and numpy (rows by position,
preferences by the metric's a1=0, a2=1, same=2), not through the builder's own row readers.
"""
import pathlib
import shutil

import numpy as np
import pytest

from merjax.data import prepare
from tfds_builders.mer2026 import ReleaseError, clips, write_demo_release
from tfds_builders.mer_prefer import mer_prefer_dataset_builder as mp
from tests.clip_builders import build_cache, clip_data, read_csv, write_csv

TINY = dict(seed=0, scale=0.01, num_track1_train=6, num_candidates=2, num_track3_emoprefer=6,
            num_track3_emopreferv2=8, num_track3_candidates=7, num_track3_repeats=3,
            face_frames=(3, 6))
V1, V2, CAND = "track3_emoprefer.csv", "track3_emopreferv2.csv", "track3_candidate.csv"
CODE = {"a1": 0, "a2": 1, "same": 2}
HEADER = ("name", "a1", "a2", "preference")


def _config(root, **overrides):
    return mp.builder_config(clip_data(**overrides), root, release="demo", release_id="")


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    return write_demo_release(tmp_path_factory.mktemp("mer_prefer_release") / "flat", **TINY)


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    return build_cache(mp.Builder, tmp_path_factory)


@pytest.fixture
def broken(root, tmp_path):
    """A private copy of the release, for tests that change it."""
    return pathlib.Path(shutil.copytree(root, tmp_path / "release"))


def _rows(path):
    return [tuple(r.values()) for r in read_csv(path)]


def _examples(builder, split):
    """The split's examples in row order: train by (source order, index), candidates by index."""
    source = builder.as_data_source(split)
    order = {b"emoprefer": 0, b"emopreferv2": 1, b"": 2}
    return sorted((source[i] for i in range(len(source))),
                  key=lambda ex: (order[ex["source"]], int(ex["index"])))


def _decoded(ex, col):
    """The description `col` from its stored bytes, checking the padding is zeros."""
    n = int(ex[f"{col}_length"])
    assert not ex[f"{col}_bytes"][n:].any()
    return ex[f"{col}_bytes"][:n].tobytes().decode("utf-8")


def _build_fails(root, config, tmp_path, match):
    """The build raises ReleaseError naming every pattern, before any record is written."""
    data_dir = tmp_path / "tfds_fail"
    with pytest.raises(ReleaseError) as err:
        prepare.build(mp.Builder, config, manual_dir=root, data_dir=data_dir, num_shards=2)
    for pattern in match:
        assert pattern in str(err.value), (pattern, str(err.value))
    assert not list(data_dir.rglob("*.array_record*"))
    return str(err.value)


# ------------------------------------------------------------------------------------------------
# Splits: every row, in order, with its preference and descriptions

@pytest.mark.parametrize("kind", ["features", "raw"])
def test_every_csv_row_is_an_example_in_row_order(root, build, kind):
    builder = build(root, _config(root, input_kind=kind))
    expected = ([("emoprefer", i, r) for i, r in enumerate(read_csv(root / V1))]
                + [("emopreferv2", i, r) for i, r in enumerate(read_csv(root / V2))])
    train = _examples(builder, "train")
    assert len(train) == len(expected) == 6 + 8
    for ex, (source, index, row) in zip(train, expected):
        assert (ex["source"].decode(), int(ex["index"])) == (source, index)
        assert ex["name"].decode() == row["name"]
        assert int(ex["preference"]) == CODE[row["preference"]]
        for col in ("a1", "a2"):  # the demo's descriptions fit the default 1024 bytes
            assert ex[col].decode() == row[col] == _decoded(ex, col)
            assert ex[f"{col}_bytes"].shape == (1024,) and ex[f"{col}_bytes"].dtype == np.uint8
    assert {int(ex["preference"]) for ex in train} == {0, 1, 2}  # ties are kept

    cand_rows = read_csv(root / CAND)
    names = [r["name"] for r in cand_rows]
    assert len(names) == 7 and len(set(names)) < len(names)  # the demo repeats names
    cands = _examples(builder, "candidates")
    assert [ex["name"].decode() for ex in cands] == names
    assert [int(ex["index"]) for ex in cands] == list(range(7))
    for ex, row in zip(cands, cand_rows):
        assert (int(ex["preference"]), int(ex["fold"]), ex["source"]) == (-1, -1, b"")
        assert (ex["a1"].decode(), ex["a2"].decode()) == (row["a1"], row["a2"])
        assert _decoded(ex, "a2") == row["a2"]

    meta = builder.info.metadata
    assert meta["csv_rows"] == {"emoprefer": 6, "emopreferv2": 8, "candidates": 7}
    assert meta["counts"] == {"train": 14, "candidates": 7}
    assert meta["preference_counts"] == {
        s: {p: sum(r["preference"] == p for r in read_csv(root / f)) for p in CODE}
        for s, f in (("emoprefer", V1), ("emopreferv2", V2))}
    assert meta["duplicate_candidate_names"] == len({n for n in names if names.count(n) > 1})
    assert meta["duplicate_candidate_rows"] == len(names) - len(set(names))
    assert meta["cut_descriptions"] == {"train": 0, "candidates": 0}
    assert meta["longest_description_bytes"]["train"] == max(
        len(r[c].encode()) for _, _, r in expected for c in ("a1", "a2"))
    if kind == "raw":  # the English subtitle, as MER-FG
        subs = {r["name"]: r["english"] for r in read_csv(root / "subtitle_chieng.csv")}
        for ex in train + cands:
            assert subs[ex["name"].decode()].encode().startswith(ex["text"])
            assert ex["faces"].shape == (4, 32, 32, 3) and ex["audio"].shape == (151, 80)


def test_repeated_names_carry_their_own_clip_inputs(root, build, tmp_path, monkeypatch):
    """Every candidate row, repeated name or not, holds its clip's features, read from disk
    once per distinct name and released after the name's last row."""
    reads, made = [], []
    read_features, check = clips.ClipInputs._read_features, clips.ClipInputs.check

    def counting_read(self, name, lacks):
        reads.append(name)
        return read_features(self, name, lacks)

    def remembering_check(self, names):
        made.append(self)
        return check(self, names)
    monkeypatch.setattr(clips.ClipInputs, "_read_features", counting_read)
    monkeypatch.setattr(clips.ClipInputs, "check", remembering_check)
    prepare.build(mp.Builder, _config(root), manual_dir=root, data_dir=tmp_path / "once",
                  num_shards=2)
    names = [r["name"] for r in read_csv(root / V1) + read_csv(root / V2) + read_csv(root / CAND)]
    assert len(names) > len(set(names)) and sorted(reads) == sorted(set(names))
    assert len(made) == 1 and made[0]._held == {}
    monkeypatch.undo()

    cands = _examples(build(root, _config(root)), "candidates")
    for ex in cands:
        name = ex["name"].decode()
        for role, folder in zip(clips.ROLES, clips.FEATURE_DIRS):
            want = np.load(root / "features" / folder / f"{name}.npy")
            np.testing.assert_allclose(ex[role][0], want, rtol=1e-6)
            assert ex[f"{role}_length"] == 1


# ------------------------------------------------------------------------------------------------
# Folds

def test_folds_are_by_name_seeded_and_deterministic(root, broken, build, tmp_path):
    # Judge some clips again: a v1 clip twice more in v2, a v2 clip twice in v2.
    v1, v2 = _rows(broken / V1), _rows(broken / V2)
    extra = [(v1[0][0], v1[1][2], v1[1][1], "a2"), (v1[0][0], v1[0][1], v1[2][2], "same"),
             (v2[3][0], v2[0][1], v2[0][2], "a1")]
    write_csv(broken / V2, HEADER, v2 + extra)
    config = _config(broken)
    builder = build(broken, config)
    train = _examples(builder, "train")
    assert len(train) == 6 + 8 + 3  # every row kept, repeats too
    folds = {}
    for ex in train:
        folds.setdefault(ex["name"].decode(), set()).add(int(ex["fold"]))
    assert all(len(f) == 1 for f in folds.values())  # all rows of a clip share one fold
    fold_of = {n: f.pop() for n, f in folds.items()}
    assert set(fold_of.values()) == set(range(5))
    meta = builder.info.metadata
    assert meta["repeated_train_names"] == 2 and meta["train_clips"] == 14
    assert meta["fold_sizes"] == np.bincount([fold_of[ex["name"].decode()] for ex in train],
                                             minlength=5).tolist()
    assert sum(meta["fold_sizes"]) == 17 and sorted(meta["fold_clips"]) == [2, 3, 3, 3, 3]
    assert meta["preference_counts"]["emopreferv2"]["same"] == sum(
        r[3] == "same" for r in v2) + 1
    # the same seed deals the same folds in another build; another seed deals others
    again = prepare.build(mp.Builder, config, manual_dir=broken, data_dir=tmp_path / "again",
                          num_shards=2)
    assert [int(ex["fold"]) for ex in _examples(again, "train")] == [
        int(ex["fold"]) for ex in train]
    other = _examples(build(broken, _config(broken, fold_seed=3)), "train")
    assert [int(ex["fold"]) for ex in other] != [int(ex["fold"]) for ex in train]


def test_emoprefer_only_drops_the_v2_rows(broken, tmp_path):
    config = _config(broken, sources=("emoprefer",))
    assert "_ep1_k5s0_d1024" in config.name and config.sources == ("emoprefer",)
    (broken / V2).unlink()  # not a source of this config: never read
    builder = prepare.build(mp.Builder, config, manual_dir=broken, data_dir=tmp_path / "v1",
                            num_shards=2)
    train = _examples(builder, "train")
    assert [ex["name"].decode() for ex in train] == [r["name"] for r in read_csv(broken / V1)]
    assert {ex["source"] for ex in train} == {b"emoprefer"}
    meta = builder.info.metadata
    assert meta["csv_rows"] == {"emoprefer": 6, "candidates": 7}
    assert set(meta["preference_counts"]) == {"emoprefer"}
    assert str(broken / V2) not in map(str, mp.release_sources(clip_data(sources=["emoprefer"]),
                                                               broken))
    _build_fails(broken, _config(broken), tmp_path, [str(broken / V2), "found no file"])


# ------------------------------------------------------------------------------------------------
# Descriptions as bytes

def test_long_descriptions_are_cut_on_a_character_boundary(broken, tmp_path):
    rows = _rows(broken / CAND)
    rows[1] = (rows[1][0], "Très ému 😊", rows[1][2])  # 10 bytes before the emoji (4 bytes)
    write_csv(broken / CAND, ("name", "a1", "a2"), rows)
    config = _config(broken, max_description_bytes=7)
    builder = prepare.build(mp.Builder, config, manual_dir=broken, data_dir=tmp_path / "cut",
                            num_shards=2)
    ex = _examples(builder, "candidates")[1]
    assert ex["a1"].decode() == "Très ému 😊"  # the text itself is kept whole
    # 7 bytes would end inside "é" (bytes 7-8): the cut keeps the 6 bytes before it
    assert _decoded(ex, "a1") == "Très " and ex["a1_length"] == 6
    assert ex["a1_bytes"].shape == (7,)
    meta = builder.info.metadata
    assert meta["cut_descriptions"] == {"train": 2 * 14, "candidates": 2 * 7}
    with pytest.raises(ValueError, match="max_description_bytes"):
        mp.make_config(max_description_bytes=3)


# ------------------------------------------------------------------------------------------------
# Configs and sources

def test_config_names_fields_and_instances(root):
    config = _config(root)
    assert config is _config(root) and config is mp.make_config(release="demo")
    assert config.name == f"demo_{clips.inputs_name(config)}_ep12_k5s0_d1024"
    assert _config(root, on_missing="skip").name.endswith("_skip")
    raw = _config(root, input_kind="raw", max_description_bytes=256, num_folds=3, fold_seed=2)
    assert "_raw_mel80_a1p5s_f4x32_en48_ep12_k3s2_d256" in raw.name
    assert mp.make_config(input_kind="raw").text_language == "english"
    assert mp.make_config(sources=("emopreferv2", "emoprefer")).sources == mp.SOURCES
    # shapes only (no release read): what a benchmark on synthetic inputs asks for
    shapes = mp.builder_config(clip_data(feature_dims=(768, 1024, 768), max_description_bytes=64),
                               None, release="demo", release_id="")
    assert shapes.max_description_bytes == 64 and shapes.feature_dims == (768, 1024, 768)
    for bad in (dict(sources=()), dict(sources=("emoprefer", "emoprefer")),
                dict(sources=("v3",)), dict(num_folds=1), dict(fold_seed=-1),
                dict(max_description_bytes=0), dict(name="mine")):
        with pytest.raises(ValueError):
            mp.PreferConfig(**bad)


def test_release_sources_name_the_csvs_and_inputs(root):
    sources = [str(p) for p in mp.release_sources(clip_data(), root)]
    for file in (V1, V2, CAND, "subtitle_chieng.csv"):
        assert str(root / file) in sources
    assert str(root / "features" / clips.FEATURE_DIRS[0]) in sources
    assert str(root / "audio") in map(str, mp.release_sources(clip_data(input_kind="raw"), root))


# ------------------------------------------------------------------------------------------------
# Bad input: an error naming the file and row, before anything is written

def test_a_bad_preference_is_an_error_naming_file_and_line(broken, tmp_path):
    rows = _rows(broken / V2)
    # a description over two lines first, so the bad row's line is not its row + 1
    rows[0] = (rows[0][0], rows[0][1] + "\nThen silence.", rows[0][2], rows[0][3])
    rows[4] = rows[4][:3] + ("tie",)
    write_csv(broken / V2, HEADER, rows)
    _build_fails(broken, _config(broken), tmp_path,
                 [str(broken / V2), "data row 5 (line 7)", "'preference'",
                  "expected one of ['a1', 'a2', 'same']", "found 'tie'"])


def test_an_empty_description_is_an_error_naming_file_and_line(broken, tmp_path):
    good = _rows(broken / V1)
    rows = list(good)
    rows[0] = (rows[0][0], rows[0][1] + "\nThen silence.", rows[0][2], rows[0][3])
    rows[2] = (rows[2][0], rows[2][1], "", rows[2][3])
    rows[4] = (rows[4][0], "  ", rows[4][2], rows[4][3])  # blank counts as empty
    write_csv(broken / V1, HEADER, rows)
    _build_fails(broken, _config(broken), tmp_path,
                 [str(broken / V1), "data row 3 (line 5), column 'a2'", "non-empty", "found ''",
                  "1 more empty description(s): data row 5 (line 7), column 'a1'"])
    write_csv(broken / V1, HEADER, good)
    cands = _rows(broken / CAND)
    cands[6] = (cands[6][0], cands[6][1], "")
    write_csv(broken / CAND, ("name", "a1", "a2"), cands)
    _build_fails(broken, _config(broken), tmp_path,
                 [str(broken / CAND), "data row 7 (line 8), column 'a2'"])


def test_a_wrong_header_or_missing_csv_is_an_error(broken, tmp_path):
    rows = _rows(broken / V1)
    write_csv(broken / V1, ("name", "a1", "a2", "label"), rows)
    _build_fails(broken, _config(broken), tmp_path,
                 [str(broken / V1), "wrong header", "['name', 'a1', 'a2', 'preference']"])
    write_csv(broken / V1, HEADER, rows)
    (broken / CAND).unlink()
    _build_fails(broken, _config(broken), tmp_path, [str(broken / CAND), "found no file"])


def test_a_candidate_without_media_is_an_error_or_kept_and_counted(broken, tmp_path):
    names = [r["name"] for r in read_csv(broken / CAND)]
    lost = next(n for n in names if names.count(n) > 1)  # a repeated name: several rows
    (broken / "audio" / f"{lost}.wav").unlink()
    (broken / "features" / clips.FEATURE_DIRS[2] / f"{lost}.npy").unlink()
    _build_fails(broken, _config(broken, input_kind="raw"), tmp_path,
                 ["audio: 1 of", str(broken / "audio"), lost])
    _build_fails(broken, _config(broken), tmp_path,
                 [f"features/{clips.FEATURE_DIRS[2]}: 1 of", lost])

    raw = prepare.build(mp.Builder, _config(broken, input_kind="raw", on_missing="skip"),
                        manual_dir=broken, data_dir=tmp_path / "raw", num_shards=2)
    meta = raw.info.metadata
    assert meta["missing"]["candidates"][lost] == {"audio": clips.NO_FILE}
    assert meta["num_missing"]["candidates"]["audio"] == 1  # one clip ...
    rows_lacking = sum(n in meta["missing"]["candidates"] for n in names)
    assert meta["rows_missing"]["candidates"] == rows_lacking >= names.count(lost)  # ... its rows
    assert meta["counts"] == {"train": 14, "candidates": 7}  # every candidate is answered
    for ex in _examples(raw, "candidates"):
        if ex["name"].decode() == lost:
            assert ex["audio_length"] == 0 and not ex["audio"].any() and ex["faces_length"] == 4

    feats = prepare.build(mp.Builder, _config(broken, on_missing="skip"), manual_dir=broken,
                          data_dir=tmp_path / "feats", num_shards=2)
    meta = feats.info.metadata
    assert meta["missing"] == {"train": {}, "candidates": {lost: {"video": clips.NO_FILE}}}
    assert meta["rows_missing"] == {"train": 0, "candidates": names.count(lost)}
    blind = [ex for ex in _examples(feats, "candidates") if ex["name"].decode() == lost]
    assert len(blind) == names.count(lost) > 1
    for ex in blind:
        assert ex["video_length"] == 0 and not ex["video"].any()
        assert ex["audio_length"] == ex["text_length"] == 1 and ex["audio"].any()
