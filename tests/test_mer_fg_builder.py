"""MER-FG (track 2) TFDS builder on a tiny demo release.

Expected values are recomputed from the release files with csv and a plain split of the openset
cells, normalised through the emotion-wheel API (the metric's word forms), not through the
builder's own row reader.
"""
import collections
import pathlib
import shutil

import numpy as np
import pytest

from merjax.data import prepare
from tfds_builders.mer2026 import ReleaseError, clips, emotion_wheel, write_demo_release
from tfds_builders.mer_fg import mer_fg_dataset_builder as fg
from tests.clip_builders import build_cache, clip_data, read_csv, write_csv

TINY = dict(seed=0, scale=0.01, num_track1_train=6, num_candidates=4, num_track2_human=10,
            num_track2_mercaptionplus=12, num_track2_overlap=3, face_frames=(3, 10))
HUMAN, MCP = "track2_train_human.csv", "track2_train_mercaptionplus.csv"
SPLITS = ("train", "candidates")


def _config(root, **overrides):
    return fg.builder_config(clip_data(**overrides), root, release="demo", release_id="")


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    return write_demo_release(tmp_path_factory.mktemp("mer_fg_release") / "flat", **TINY)


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    return build_cache(fg.Builder, tmp_path_factory)


@pytest.fixture
def broken(root, tmp_path):
    """A private copy of the release, for tests that change it."""
    return pathlib.Path(shutil.copytree(root, tmp_path / "release"))


def _words(cell):
    """An openset cell's words: `a,b`, `[a, b]` and `['a', 'b']` all hold a and b."""
    cell = cell.strip().removeprefix("[").removesuffix("]")
    return [w.strip().strip("'\"").strip() for w in cell.split(",") if w.strip(" '\"")]


def _expected_train(root, sources=("human", "mercaptionplus")):
    """name -> (source, row in its CSV, words) after dropping MER-Caption+ rows of human names."""
    out = {}
    for source, file in (("human", HUMAN), ("mercaptionplus", MCP)):
        if source in sources:
            for i, row in enumerate(read_csv(root / file)):
                out.setdefault(row["name"], (source, i, _words(row["openset"])))
    return out


def _examples(builder, split):
    source = builder.as_data_source(split)
    return {source[i]["name"].decode(): source[i] for i in range(len(source))}


def _build_fails(root, config, tmp_path, match):
    """The build raises ReleaseError naming every pattern, before any record is written."""
    data_dir = tmp_path / "tfds_fail"
    with pytest.raises(ReleaseError) as err:
        prepare.build(fg.Builder, config, manual_dir=root, data_dir=data_dir, num_shards=2)
    for pattern in match:
        assert pattern in str(err.value), (pattern, str(err.value))
    assert not list(data_dir.rglob("*.array_record*"))
    return str(err.value)


# ------------------------------------------------------------------------------------------------
# Splits, sources, order

@pytest.mark.parametrize("kind", ["features", "raw"])
def test_splits_are_the_deduplicated_csv_rows_and_the_candidates_in_order(root, build, kind):
    builder = build(root, _config(root, input_kind=kind))
    expected = _expected_train(root)
    assert len(expected) == 10 + 12 - 3
    train = _examples(builder, "train")
    assert train.keys() == expected.keys()
    for name, (source, index, words) in expected.items():
        ex = train[name]
        assert (ex["source"].decode(), ex["index"]) == (source, index), name
        assert ex["words"].decode() == ", ".join(words)
    cand_names = [r["name"] for r in read_csv(root / "track1_track2_candidate.csv")]
    cands = sorted(_examples(builder, "candidates").values(), key=lambda ex: ex["index"])
    assert [ex["name"].decode() for ex in cands] == cand_names
    assert [ex["index"] for ex in cands] == list(range(4))
    for ex in cands:
        assert (ex["source"], ex["fold"], ex["words"]) == (b"", fg.NO_FOLD, b"")
        assert not ex["labels"].any()
    meta = builder.info.metadata
    assert meta["csv_rows"] == {"human": 10, "mercaptionplus": 12, "candidates": 4}
    assert meta["counts"] == {"train": 19, "candidates": 4}
    assert meta["source_rows"] == {"human": 10, "mercaptionplus": 9} and meta["overlap"] == 3
    # the demo puts one candidate among the human rows, as the real release does
    assert meta["train_in_candidates"] == sorted(set(expected) & set(cand_names))
    assert len(meta["train_in_candidates"]) == 1
    if kind == "raw":  # MER-FG reads the English subtitle
        subs = {r["name"]: r["english"] for r in read_csv(root / "subtitle_chieng.csv")}
        for name, ex in train.items():
            assert subs[name].encode().startswith(ex["text"]) and len(ex["text"]) <= 48
            assert ex["faces"].shape == (4, 32, 32, 3) and ex["audio"].shape == (151, 80)
        assert any(len(subs[n].encode()) > 48 for n in train)  # some were cut


# ------------------------------------------------------------------------------------------------
# Labels and vocabulary

def test_vocabulary_and_multi_hot_rows_are_the_canonical_words(root, build):
    wheel = emotion_wheel.load()
    expected = _expected_train(root)
    canonical = {n: {wheel.canonical(w) for w in words} - {None}
                 for n, (_, _, words) in expected.items()}
    vocabulary = sorted(set().union(*canonical.values()))
    config = _config(root)
    assert list(config.vocabulary) == vocabulary and len(vocabulary) > 10
    builder = build(root, config)
    assert builder.info.features["labels"].shape == (len(vocabulary),)
    assert builder.info.metadata["vocabulary"] == vocabulary
    for name, ex in _examples(builder, "train").items():
        assert ex["labels"].dtype == np.uint8
        assert {vocabulary[i] for i in np.flatnonzero(ex["labels"])} == canonical[name], name
        assert set(ex["labels"].tolist()) <= {0, 1}
    # per source, the rows carrying each word
    counts = builder.info.metadata["word_counts"]
    for source in ("human", "mercaptionplus"):
        assert counts[source] == {w: sum(w in canonical[n] for n, (s, _, _) in expected.items()
                                         if s == source) for w in vocabulary}
    # word forms collapse to one base word, as the metric maps them
    assert "anger" in vocabulary or "happiness" in vocabulary
    assert "angry" not in vocabulary and "happy" not in vocabulary


def test_words_outside_the_metric_are_counted_not_labelled(root, build):
    wheel = emotion_wheel.load()
    expected = _expected_train(root)
    outside = collections.Counter()
    occurrences = collections.Counter()
    no_word = collections.Counter()
    for source, _, words in expected.values():
        gone = [w.lower().strip() for w in words if wheel.canonical(w) is None]
        outside.update(gone)
        occurrences[source] += len(gone)
        no_word[source] += len(gone) == len(words)
    assert outside["neutral"] > 0  # the demo's neutral class says "neutral"
    meta = build(root, _config(root)).info.metadata
    assert meta["outside_vocabulary"]["words"] == dict(outside)
    assert list(meta["outside_vocabulary"]["words"].values()) == sorted(outside.values(),
                                                                        reverse=True)
    assert meta["outside_vocabulary"]["occurrences"] == {
        s: occurrences[s] for s in ("human", "mercaptionplus")}
    assert meta["no_word"] == {s: no_word[s] for s in ("human", "mercaptionplus")}
    assert meta["empty_openset"] == {"human": 0, "mercaptionplus": 0}
    assert not set(outside) & set(meta["vocabulary"])


def test_a_name_in_both_sources_keeps_its_human_words(broken, build, tmp_path):
    wheel = emotion_wheel.load()
    human = {r["name"]: r["openset"] for r in read_csv(broken / HUMAN)}
    mcp = read_csv(broken / MCP)
    both = [r["name"] for r in mcp if r["name"] in human]
    assert len(both) == 3
    # Give one overlapping name MER-Caption+ words of its own (one the demo never uses) and an
    # empty openset to a MER-Caption+-only row: an empty list is data, kept and counted.
    only = next(r["name"] for r in mcp if r["name"] not in human)
    rows = [(r["name"], "['Bewildered', 'grateful']" if r["name"] == both[0]
             else "[]" if r["name"] == only else r["openset"]) for r in mcp]
    write_csv(broken / MCP, ("name", "openset"), rows)
    config = _config(broken)
    assert "bewildered" not in config.vocabulary and "grateful" not in config.vocabulary
    builder = prepare.build(fg.Builder, config, manual_dir=broken, data_dir=tmp_path / "t",
                            num_shards=2)
    train = _examples(builder, "train")
    ex = train[both[0]]
    assert ex["source"] == b"human" and ex["words"].decode() == ", ".join(_words(human[both[0]]))
    vocabulary = config.vocabulary
    assert ({vocabulary[i] for i in np.flatnonzero(ex["labels"])}
            == {wheel.canonical(w) for w in _words(human[both[0]])} - {None})
    assert train[only]["words"] == b"" and not train[only]["labels"].any()
    meta = builder.info.metadata
    assert meta["empty_openset"] == {"human": 0, "mercaptionplus": 1}
    assert only in meta["no_word_examples"]["mercaptionplus"]


# ------------------------------------------------------------------------------------------------
# Folds

def test_folds_are_seeded_clip_disjoint_and_only_human(root, build, tmp_path):
    config = _config(root)
    train = _examples(build(root, config), "train")
    folds = {n: int(ex["fold"]) for n, ex in train.items()}
    human = [n for n, ex in train.items() if ex["source"] == b"human"]
    assert sorted(folds[n] for n in human) == sorted(list(range(5)) * 2)  # 10 rows, 2 a fold
    assert all(folds[n] == -1 for n, ex in train.items() if ex["source"] == b"mercaptionplus")
    members = [{n for n in human if folds[n] == k} for k in range(5)]
    assert set().union(*members) == set(human) and sum(map(len, members)) == len(human)
    assert build(root, config).info.metadata["fold_sizes"] == [2] * 5
    # a second build with the same seed deals the same folds; another seed deals others
    again = prepare.build(fg.Builder, config, manual_dir=root, data_dir=tmp_path / "again",
                          num_shards=2)
    assert {n: int(ex["fold"]) for n, ex in _examples(again, "train").items()} == folds
    other = _examples(build(root, _config(root, fold_seed=7)), "train")
    assert {n: int(other[n]["fold"]) for n in human} != {n: folds[n] for n in human}
    # a name's fold depends on the set of names and the seed, not the row order
    assert fg.assign_folds(human[::-1], 5, 0) == fg.assign_folds(human, 5, 0)


def test_human_only_train_drops_the_mercaptionplus_rows(root, broken, tmp_path):
    config = _config(broken, train_sources=("human",))
    wheel = emotion_wheel.load()
    expected = _expected_train(broken, sources=("human",))
    assert "_h_k5s0_" in config.name and config.train_sources == ("human",)
    assert list(config.vocabulary) == sorted(
        {wheel.canonical(w) for _, _, words in expected.values() for w in words} - {None})
    (broken / MCP).unlink()  # not a source of this config: never read
    builder = prepare.build(fg.Builder, config, manual_dir=broken, data_dir=tmp_path / "h",
                            num_shards=2)
    train = _examples(builder, "train")
    assert train.keys() == expected.keys() and len(train) == 10
    assert {ex["source"] for ex in train.values()} == {b"human"}
    meta = builder.info.metadata
    assert meta["csv_rows"] == {"human": 10, "candidates": 4} and meta["overlap"] == 0
    assert [str(p) for p in fg.release_sources(clip_data(train_sources=("human",)), broken)
            ].count(str(broken / MCP)) == 0
    # the same release with both sources: the CSV is needed
    _build_fails(broken, _config(root), tmp_path, [str(broken / MCP), "found no file"])


# ------------------------------------------------------------------------------------------------
# Configs

def test_config_names_fields_and_instances(root):
    config = _config(root)
    assert config is _config(root)
    assert config.name.startswith("demo_features_utt_")
    assert f"_hm_k5s0_v{len(config.vocabulary)}_" in config.name
    assert _config(root, on_missing="skip").name.endswith("_skip")
    raw = _config(root, input_kind="raw")
    assert "_raw_mel80_a1p5s_f4x32_en48_hm_" in raw.name  # English subtitle by default
    assert fg.make_config(input_kind="raw").text_language == "english"
    swapped = fg.make_config(release="demo", vocabulary=config.vocabulary,
                             train_sources=("mercaptionplus", "human"))
    assert swapped.train_sources == ("human", "mercaptionplus")
    fewer = fg.make_config(release="demo", vocabulary=config.vocabulary[1:])
    assert fewer.name != fg.make_config(release="demo", vocabulary=config.vocabulary).name
    assert fg.make_config(vocabulary=("a",), emotion_wheel_dir="/w").name != fg.make_config(
        vocabulary=("a",)).name
    assert "vocabulary" not in repr(config)  # ~1k words stay out of TFDS's log line
    for bad in (dict(train_sources=()), dict(train_sources=("human", "human")),
                dict(train_sources=("both",)), dict(num_folds=1), dict(fold_seed=-1),
                dict(vocabulary=("b", "a")), dict(vocabulary=("a", "a")),
                dict(text_language="french"), dict(name="mine")):
        with pytest.raises(ValueError):
            fg.FgConfig(**bad)


def test_release_sources_name_the_csvs_inputs_and_wheel(root):
    sources = [str(p) for p in fg.release_sources(clip_data(), root)]
    for file in (HUMAN, MCP, "track1_track2_candidate.csv", "subtitle_chieng.csv"):
        assert str(root / file) in sources
    assert str(emotion_wheel.FOLDER) in sources
    assert str(root / "features" / clips.FEATURE_DIRS[0]) in sources
    raw = [str(p) for p in fg.release_sources(clip_data(input_kind="raw", emotion_wheel_dir="/w"),
                                              root)]
    assert str(root / "audio") in raw and "/w" in raw and str(emotion_wheel.FOLDER) not in raw


# ------------------------------------------------------------------------------------------------
# Bad input: an error naming the file (and row), before anything is written

def test_malformed_csvs_are_errors_naming_file_and_row(root, broken, tmp_path):
    config = _config(root)
    human = read_csv(broken / HUMAN)
    write_csv(broken / HUMAN, ("name", "opensets"), [(r["name"], r["openset"]) for r in human])
    _build_fails(broken, config, tmp_path, [str(broken / HUMAN), "wrong header",
                                            "['name', 'openset']", "['name', 'opensets']"])
    with pytest.raises(ReleaseError, match="wrong header"):
        _config(broken)
    rows = [(r["name"], r["openset"]) for r in human]
    write_csv(broken / HUMAN, ("name", "openset"), rows + [(rows[2][0], "sad")])
    _build_fails(broken, config, tmp_path, [str(broken / HUMAN), "data row 11",
                                            f"found {rows[2][0]!r} again (first at data row 3)"])
    write_csv(broken / HUMAN, ("name", "openset"), rows)
    # an unquoted list literal splits into three fields
    mcp = (broken / MCP).read_text(encoding="utf-8").splitlines()
    mcp[4] = mcp[4].split(",")[0] + ",[happy, sad]"
    (broken / MCP).write_text("\n".join(mcp) + "\n", encoding="utf-8")
    _build_fails(broken, config, tmp_path, [str(broken / MCP), "data row 4 (line 5)",
                                            "expected 2 fields", "found 3"])
    (broken / MCP).unlink()
    _build_fails(broken, config, tmp_path, [str(broken / MCP), "found no file"])


def test_a_config_of_other_words_is_refused(root, tmp_path):
    config = _config(root)
    other = fg.make_config(release="demo", vocabulary=config.vocabulary[:-1])
    _build_fails(root, other, tmp_path, [str(root / HUMAN), str(root / MCP),
                                         f"expected the {len(config.vocabulary) - 1}-word label "
                                         f"vocabulary", repr(config.vocabulary[-1])])


def test_missing_wheel_file(root, tmp_path):
    wheel_dir = pathlib.Path(shutil.copytree(emotion_wheel.FOLDER, tmp_path / "wheel"))
    (wheel_dir / "synonym.xlsx").unlink()
    with pytest.raises(ReleaseError, match="synonym.xlsx") as err:
        _config(root, emotion_wheel_dir=str(wheel_dir))
    assert str(wheel_dir) in str(err.value)
    config = fg.make_config(release="demo", emotion_wheel_dir=str(wheel_dir),
                            vocabulary=_config(root).vocabulary)
    _build_fails(root, config, tmp_path, [str(wheel_dir), "synonym.xlsx", "not found"])


def test_train_name_without_media_is_an_error_or_counted(broken, tmp_path):
    train = _expected_train(broken)
    lost = next(n for n, (s, _, _) in train.items() if s == "mercaptionplus")
    (broken / "audio" / f"{lost}.wav").unlink()
    cand = read_csv(broken / "track1_track2_candidate.csv")[1]["name"]
    (broken / "features" / clips.FEATURE_DIRS[2] / f"{cand}.npy").unlink()
    _build_fails(broken, _config(broken, input_kind="raw"), tmp_path,
                 ["audio: 1 of", str(broken / "audio"), lost])
    _build_fails(broken, _config(broken), tmp_path,
                 [f"features/{clips.FEATURE_DIRS[2]}: 1 of", cand])

    raw = prepare.build(fg.Builder, _config(broken, input_kind="raw", on_missing="skip"),
                        manual_dir=broken, data_dir=tmp_path / "raw", num_shards=2)
    meta = raw.info.metadata
    # besides the lost wav: the clips whose English subtitle is empty (data, counted)
    silent = {r["name"] for r in read_csv(broken / "subtitle_chieng.csv") if not r["english"]}
    assert silent & set(train) and lost not in silent
    assert meta["missing"]["train"] == {lost: {"audio": clips.NO_FILE},
                                        **{n: {"text": clips.EMPTY_SUBTITLE}
                                           for n in silent & set(train)}}
    assert meta["num_missing"]["train"] == {"audio": 1, "faces": 0,
                                            "text": len(silent & set(train))}
    assert meta["counts"] == {"train": 19, "candidates": 4}
    ex = _examples(raw, "train")[lost]
    assert ex["audio_length"] == 0 and not ex["audio"].any() and ex["faces_length"] == 4
    assert ex["labels"].any() or not ex["words"]  # the labels stay

    feats = prepare.build(fg.Builder, _config(broken, on_missing="skip"), manual_dir=broken,
                          data_dir=tmp_path / "feats", num_shards=2)
    assert feats.info.metadata["missing"] == {"train": {},
                                              "candidates": {cand: {"video": clips.NO_FILE}}}
    blind = _examples(feats, "candidates")[cand]
    assert blind["video_length"] == 0 and not blind["video"].any()
    assert blind["audio_length"] == blind["text_length"] == 1
