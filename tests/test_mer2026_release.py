"""Tests of the shared MER2026 release reader and the seeded demo release (tracks 1-3)."""
import csv
import json
import re

import numpy as np
import pytest
import soundfile as sf

from tfds_builders.mer2026 import (PREFERENCES, TRACK1_LABELS, Mer2026Release, ReleaseError,
                                   check_feature_dims, csvs, demo, index_media, locate_release,
                                   read_feature, read_openface, read_wav, sample_faces,
                                   string_to_list, write_demo_release)
from tfds_builders.mer2026.release import feature_frames

# Tiny but with 4 train clips per class, so held-out checks have something to hold out.
TINY = dict(scale=0.25, num_track1_train=24)
UTT, FRA = "chinese-hubert-base-UTT", demo.DEMO_FRAME_FEATURE
CLIP, BERT = "clip-vit-large-patch14-UTT", "chinese-macbert-large-UTT"


@pytest.fixture(scope="session")
def demo_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("mer2026")
    flat = write_demo_release(base / "flat" / "mer2026-dataset", seed=0, **TINY)
    nested = write_demo_release(base / "nested", seed=0, layout="nested", **TINY)
    return flat, nested


@pytest.fixture(scope="session")
def rel(demo_roots):
    return Mer2026Release(demo_roots[0])


@pytest.fixture(scope="session")
def truth(demo_roots):
    return demo.read_demo_clips(demo_roots[0])


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# layouts, CSVs, determinism


def test_flat_and_nested_layouts_find_every_file_and_read_identical_data(demo_roots, truth):
    flat, nested = Mer2026Release(demo_roots[0].parent), Mer2026Release(demo_roots[1])
    assert flat.root == demo_roots[0].resolve()  # found via the parent folder
    assert flat.is_demo and nested.is_demo
    subsets = {p.parent.parent.name for p in nested.media_index("audio").values()}
    assert len(subsets) > 1 and all(s.startswith("audio_track") for s in subsets)
    names = sorted(truth)
    for r in (flat, nested):
        r.check_available(names, ["audio", "openface_face", "subtitle"], [UTT, FRA, BERT, CLIP])
        assert sorted(r.media_index("audio")) == sorted(r.media_index("openface_face")) == names
    assert flat.subtitles() == nested.subtitles()
    assert flat.track3_candidates() == nested.track3_candidates()
    for n in names:
        np.testing.assert_array_equal(flat.read_audio(n), nested.read_audio(n))
        np.testing.assert_array_equal(flat.read_faces(n), nested.read_faces(n))
        np.testing.assert_array_equal(flat.read_feature(FRA, n), nested.read_feature(FRA, n))


def test_csv_counts_and_parsed_values(rel, demo_roots):
    counts = json.loads((demo_roots[0] / demo.DEMO_MARKER).read_text().splitlines()[1])["counts"]
    t1 = rel.track1_train()
    assert len(t1) == counts["track1_train"] == 24
    assert all(TRACK1_LABELS[r.label_index] == r.label for r in t1)
    assert {r.label for r in t1} == set(TRACK1_LABELS)
    cand = rel.track1_track2_candidates()
    assert len(cand) == counts["candidates"] and not set(cand) & {r.name for r in t1}
    human, mcp = rel.track2_train("human"), rel.track2_train("mercaptionplus")
    assert (len(human), len(mcp)) == (counts["track2_human"], counts["track2_mercaptionplus"])
    assert len({r.name for r in human} & {r.name for r in mcp}) == counts["track2_overlap"]
    assert all(r.openset and all(w == w.strip() and w for w in r.openset) for r in human + mcp)
    assert any(r.raw.startswith("['") for r in mcp)
    assert any(r.raw.startswith("[") and "'" not in r.raw for r in mcp)
    words = {w for r in human + mcp for w in r.openset}
    assert words <= {w for ws in demo.EMOTION_WORDS.values() for w in ws}
    for version in ("emoprefer", "emopreferv2"):
        rows = rel.track3_train(version)
        assert len(rows) == counts[f"track3_{version}"]
        assert {r.preference for r in rows} == set(PREFERENCES)
        assert all(PREFERENCES[r.preference_index] == r.preference for r in rows)
        assert [r.row_index for r in rows] == list(range(len(rows)))
    subs = rel.subtitles()
    assert len(subs) == len(rel.media_index("audio"))
    assert any(s.english == "" for s in subs.values())  # an empty subtitle reads as ""
    assert all(s.chinese for s in subs.values())
    assert any("\n" in s.english or '"' in s.english for s in subs.values())


def test_string_to_list_all_forms():
    assert string_to_list("shocked,care,serious") == ["shocked", "care", "serious"]
    assert string_to_list("[concern, pessimism]") == ["concern", "pessimism"]
    assert string_to_list("['happy', \"let down\"]") == ["happy", "let down"]
    assert string_to_list("sad, let down ,") == ["sad", "let down"]
    assert string_to_list(" [a, b] ") == ["a", "b"]
    assert [string_to_list(x) for x in ("", "[]", None, float("nan"))] == [[]] * 4
    assert string_to_list(["x"]) == ["x"]


def test_track3_candidates_keep_repeated_names_in_order(rel):
    rows = rel.track3_candidates()
    with open(rel.csv_path("track3_candidates"), newline="", encoding="utf-8") as f:
        raw = list(csv.reader(f))[1:]
    assert [(r.name, r.a1, r.a2) for r in rows] == [tuple(x) for x in raw]
    assert [r.row_index for r in rows] == list(range(len(raw)))
    assert len({r.name for r in rows}) < len(rows)  # repeats present and kept


def test_demo_is_byte_identical_per_seed_and_differs_across_seeds(demo_roots, tmp_path):
    again = write_demo_release(tmp_path / "again", seed=0, **TINY)
    other = write_demo_release(tmp_path / "other", seed=1, **TINY)
    ref = _tree(demo_roots[0])
    assert _tree(again) == ref
    assert "README.md" in ref and demo.DEMO_MARKER in ref
    assert not any(k.startswith("video/") for k in ref)
    diff = _tree(other)
    assert diff["track1_train.csv"] != ref["track1_train.csv"]
    assert not set(k for k in diff if k.startswith("audio/")) & set(ref)
    with pytest.raises(FileExistsError):
        write_demo_release(again, seed=0, **TINY)


# ---------------------------------------------------------------------------------------------
# media and features


def test_media_and_feature_shapes_and_dtypes(rel, truth):
    lengths = set()
    for n in truth:
        x = rel.read_audio(n)
        assert x.dtype == np.float32 and x.ndim == 1 and 16000 <= len(x) <= 32000
        f = rel.read_faces(n)
        assert f.dtype == np.uint8 and f.shape[1:] == (112, 112, 3) and 8 <= len(f) <= 20
        lengths.add(len(f))
        assert rel.read_faces(n, num_frames=16).shape == (16, 112, 112, 3)
        assert rel.read_feature(UTT, n).shape == (1, 768)
        assert rel.read_feature(BERT, n, level="utt").shape == (1024,)
        fra = rel.read_feature(FRA, n)
        assert fra.dtype == np.float32 and fra.ndim == 2 and fra.shape[1] == 768 and len(fra) >= 2
        np.testing.assert_allclose(rel.read_feature(UTT, n, level="utt"), fra.mean(0), atol=1e-5)
    assert len(lengths) > 1
    assert [rel.check_feature_dims(fd) for fd in (UTT, CLIP, FRA)] == [768] * 3
    assert rel.check_feature_dims(BERT) == 1024


def test_openface_bgr_is_reversed_to_rgb(rel, truth):
    for n, clip in truth.items():
        path = rel.media_path("openface_face", n)
        raw, rgb = np.load(path), read_openface(path)
        np.testing.assert_array_equal(rgb, raw[..., ::-1])
        if clip.listener == "angry":  # drawn red: after conversion channel 0 (R) dominates
            assert rgb[..., 0].mean() > rgb[..., 2].mean() + 20
        if clip.listener == "sad":  # drawn blue
            assert rgb[..., 2].mean() > rgb[..., 0].mean() + 20


def test_sample_faces_is_uniform_and_repeats_when_short():
    assert sample_faces(20, 4).tolist() == [2, 7, 12, 17]
    assert sample_faces(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert sample_faces(np.zeros((8, 2)), 8).tolist() == list(range(8))
    with pytest.raises(ValueError):
        sample_faces(0, 4)


def test_feature_folder_of_frame_files_and_1d_squeeze(tmp_path):
    folder = tmp_path / "clip-vit-large-patch14-FRA" / "s1"
    folder.mkdir(parents=True)
    for i in range(3):
        np.save(folder / f"{i:03d}.npy", np.full((1, 4), i, np.float32))
    arr = read_feature(folder)
    assert arr.shape == (3, 4) and arr[:, 0].tolist() == [0, 1, 2]
    np.save(tmp_path / "one.npy", np.ones((1, 1, 5), np.float64))
    assert read_feature(tmp_path / "one.npy").shape == (1, 5)
    assert check_feature_dims(folder.parent) == 4


# ---------------------------------------------------------------------------------------------
# labels are carried by the inputs


def _ncm_accuracy(fit_x, fit_y, test_x, test_y):
    means = np.stack([np.mean([x for x, y in zip(fit_x, fit_y) if y == k], 0) for k in range(6)])
    pred = np.argmin(((np.asarray(test_x)[:, None] - means[None]) ** 2).sum(-1), 1)
    return float(np.mean(pred == np.asarray(test_y)))


def _f0(x):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    band = (freqs > 80) & (freqs < 500)
    return np.log(freqs[band][np.argmax(spec[band])])


def test_labels_are_carried_by_every_modality(rel, truth):
    lab = {n: TRACK1_LABELS.index(c.speaker) for n, c in truth.items()}
    lis = {n: TRACK1_LABELS.index(c.listener) for n, c in truth.items()}
    train = sorted(r.name for r in rel.track1_train())
    fit = [n for k in range(6) for n in [m for m in train if lab[m] == k][::2]]  # 2 per class
    held = [n for n in train if n not in fit]
    cand = list(rel.track1_track2_candidates())
    assert any(lab[n] != lis[n] for n in cand)  # dyadic: the listener differs from the speaker
    views = {  # input -> (feature of a clip, whose latent it carries on candidates)
        "audio f0": (lambda n: [_f0(rel.read_audio(n))], lab),
        "face colour": (lambda n: rel.read_faces(n).reshape(-1, 3).mean(0), lis),
        UTT: (lambda n: rel.read_feature(UTT, n, level="utt"), lab),
        BERT: (lambda n: rel.read_feature(BERT, n, level="utt"), lab),
        CLIP: (lambda n: rel.read_feature(CLIP, n, level="utt"), lis),
    }
    for view, (feat, target) in views.items():
        fx = [feat(n) for n in fit]
        acc = _ncm_accuracy(fx, [lab[n] for n in fit], [feat(n) for n in held + cand],
                            [lab[n] for n in held] + [target[n] for n in cand])
        assert acc >= 0.75, (view, acc)  # chance is 1/6
    for n, c in truth.items():  # text: cue phrases of the speaker's class, in both languages
        s = rel.subtitles()[n]
        assert any(cue in s.chinese for cue in demo._ZH_CUES[c.speaker])
        en = s.english.lower()
        assert en == "" or any(cue.lower() in en for cue in demo._EN_CUES[c.speaker])


def test_track3_preference_follows_the_clip_emotion(rel, truth, demo_roots):
    def matches(desc, cls):
        w = re.search(r"seems (.+) and (.+)\.$", desc).groups()
        return all(x in demo.EMOTION_WORDS[cls] for x in w)
    hidden = csvs.read_track3_preferences(demo_roots[0] / demo.TRUTH_DIR / "track3_candidates.csv")
    assert [r[1:4] for r in hidden] == [r[1:4] for r in rel.track3_candidates()]
    rows = rel.track3_train("emoprefer") + rel.track3_train("emopreferv2") + hidden
    for r in rows:
        m1, m2 = matches(r.a1, truth[r.name].speaker), matches(r.a2, truth[r.name].speaker)
        assert r.preference == ("same" if m1 == m2 else "a1" if m1 else "a2")
    t1 = csvs.read_track1_labels(demo_roots[0] / demo.TRUTH_DIR / "track1_candidates.csv")
    assert [r.name for r in t1] == list(rel.track1_track2_candidates())
    assert all(r.label == truth[r.name].listener for r in t1)


# ---------------------------------------------------------------------------------------------
# bad inputs: each error names the file and what was expected vs found


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _wav(path, sr=16000, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros((sr // 10, channels), np.float32), sr)
    return path


def test_csv_name_without_media_is_reported_at_once(tmp_path):
    _write(tmp_path / "track1_train.csv", "name,discrete\na,happy\nb,sad\nc,angry\n")
    _wav(tmp_path / "audio" / "a.wav")
    r = Mer2026Release(tmp_path)
    assert not r.is_demo
    names = [x.name for x in r.track1_train()]
    with pytest.raises(ReleaseError) as e:
        r.check_available(names, ["audio", "openface_face"])
    msg = str(e.value)
    where = tmp_path / "audio"
    assert f"audio: 2 of 3 names missing, searched <name>.wav at any depth under {where}" in msg
    assert "first: b, c" in msg and "openface_face: 3 of 3" in msg and "does not exist" in msg
    with pytest.raises(ReleaseError, match=r"audio: expected <name>.wav for 'b' at any depth"):
        r.read_audio("b")


def test_unknown_label_names_file_row_value_and_allowed(tmp_path):
    p = _write(tmp_path / "track1_train.csv", "name,discrete\na,happy\nb,happiness\n")
    with pytest.raises(ReleaseError) as e:
        csvs.read_track1_labels(p)
    msg = str(e.value)
    assert str(p) in msg and "data row 2 (line 3)" in msg and "'discrete'" in msg
    assert "'happiness'" in msg and str(list(TRACK1_LABELS)) in msg
    p = _write(tmp_path / "t3.csv", "name,a1,a2,preference\na,x,y,tie\n")
    with pytest.raises(ReleaseError, match=r"expected one of \['a1', 'a2', 'same'\], found 'tie'"):
        csvs.read_track3_preferences(p)


def test_wrong_header_and_duplicate_names(tmp_path):
    p = _write(tmp_path / "track2_train_human.csv", "name,labels\na,happy\n")
    with pytest.raises(ReleaseError) as e:
        csvs.read_track2_openset(p)
    assert str(p) in str(e.value)
    assert "expected columns ['name', 'openset'], found ['name', 'labels']" in str(e.value)
    p = _write(tmp_path / "cand.csv", "name\na\nb\na\n")
    with pytest.raises(ReleaseError, match=r"data row 3 .*found 'a' again \(first at data row 1\)"):
        csvs.read_names(p)
    p = _write(tmp_path / "t3c.csv", "name,a1,a2\na,x,y\na,z,w\n")  # repeats are legal here
    assert [r.a1 for r in csvs.read_track3_candidates(p)] == ["x", "z"]
    text = 'name,chinese,english\na,"你好，世界","Hi, ""you""\nthere"\nb,中文,\n'
    p = _write(tmp_path / "sub.csv", text)
    subs = csvs.read_subtitles(p)
    assert subs["a"].english == 'Hi, "you"\nthere' and subs["b"].english == ""


def test_feature_file_with_other_dimension_is_named(tmp_path):
    folder = tmp_path / "chinese-hubert-base-UTT"
    folder.mkdir()
    for n in ("s1", "s2", "s3"):
        np.save(folder / f"{n}.npy", np.zeros(768, np.float32))
    np.save(folder / "s0.npy", np.zeros(512, np.float32))  # sorted first: must still be the outlier
    with pytest.raises(ReleaseError) as e:
        check_feature_dims(folder)
    msg = str(e.value)
    assert "folder's D=768 (3 of 4 files)" in msg and f"{folder / 's0.npy'} has D=512" in msg
    np.save(folder / "s0.npy", np.zeros(768, np.int64))
    with pytest.raises(ReleaseError, match="floating-point"):
        read_feature(folder / "s0.npy")
    np.save(folder / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ReleaseError, match="obj.npy: expected a feature array in .npy format"):
        read_feature(folder / "obj.npy")  # never unpickled


def test_empty_feature_entries_have_no_frames_and_no_say_in_the_folder_dim(tmp_path):
    """MERTools would average a (0, D) feature to NaN: feature_frames finds such entries from
    their headers, and check_feature_dims takes the folder's D from the others."""
    folder = tmp_path / "chinese-hubert-base-UTT"
    folder.mkdir()
    np.save(folder / "s1.npy", np.zeros(768, np.float32))
    np.save(folder / "s2.npy", np.zeros((5, 1, 768), np.float32))
    np.save(folder / "s3.npy", np.zeros((0, 512), np.float32))  # empty: not a D=512 outlier
    np.save(folder / "s4.npy", np.zeros(0, np.float32))
    (folder / "s5").mkdir()                                     # a frame folder, no frames
    (folder / "s6").mkdir()
    for i in range(3):
        np.save(folder / "s6" / f"{i:03d}.npy", np.zeros((1, 768), np.float32))
    frames = {n: feature_frames(folder / n) for n in ("s1.npy", "s2.npy", "s3.npy", "s4.npy",
                                                      "s5", "s6")}
    assert frames == {"s1.npy": 1, "s2.npy": 5, "s3.npy": 0, "s4.npy": 0, "s5": 0, "s6": 3}
    assert check_feature_dims(folder) == 768
    with pytest.raises(ReleaseError, match=r"found only empty ones \(3, e\.g\. .*s3"):
        check_feature_dims(folder, ["s3", "s4", "s5"])


def test_corrupt_or_wrong_wav(tmp_path):
    bad = _write(tmp_path / "bad.wav", "RIFF not really a wav")
    expect = r": expected a readable 16000 Hz mono wav, found a corrupt"
    with pytest.raises(ReleaseError, match=re.escape(str(bad)) + expect):
        read_wav(bad)
    slow = _wav(tmp_path / "slow.wav", sr=8000)
    expect = r": expected 16000 Hz mono, found 8000 Hz with 1 channel"
    with pytest.raises(ReleaseError, match=re.escape(str(slow)) + expect):
        read_wav(slow)
    stereo = _wav(tmp_path / "stereo.wav", channels=2)
    with pytest.raises(ReleaseError, match=r"16000 Hz mono, found 16000 Hz with 2 channel"):
        read_wav(stereo)
    with pytest.raises(ReleaseError, match="found no file"):
        read_wav(tmp_path / "missing.wav")


def test_corrupt_or_wrong_openface_npy(rel, truth, tmp_path):
    good = rel.media_path("openface_face", next(iter(truth))).read_bytes()
    cut = tmp_path / "cut.npy"
    cut.write_bytes(good[: len(good) // 2])
    expect = r": expected uint8 faces \[T, 112, 112, 3\] .*found a corrupt"
    with pytest.raises(ReleaseError, match=re.escape(str(cut)) + expect):
        read_openface(cut)
    with pytest.raises(ReleaseError, match="found a corrupt"):
        read_openface(cut, num_frames=4)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 64, 64, 3), np.float32))
    expect = r": expected uint8 faces .* found dtype float32 shape \(4, 64, 64, 3\)"
    with pytest.raises(ReleaseError, match=re.escape(str(wrong)) + expect):
        read_openface(wrong)


def test_duplicate_name_across_nested_folders(tmp_path):
    a = _wav(tmp_path / "audio" / "audio_track1_train" / "audio" / "s1.wav")
    b = _wav(tmp_path / "audio" / "audio_track2_train_human" / "audio" / "s1.wav")
    _wav(b.parent / "._s2.wav")  # a macOS resource fork: ignored
    assert index_media(tmp_path / "audio", "audio", duplicates="identical") in ({"s1": a},
                                                                                {"s1": b})
    _wav(b, sr=22050)
    with pytest.raises(ReleaseError) as e:
        Mer2026Release(tmp_path).media_index("audio")
    msg = str(e.value)
    assert str(a) in msg and str(b) in msg and "expected each audio sample once" in msg
    face = tmp_path / "openface_face" / "x" / "s1" / "s1.npy"
    face.parent.mkdir(parents=True)
    np.save(face, np.zeros((1, 112, 112, 3), np.uint8))
    np.save(face.parent / "other.npy", np.zeros(1))  # not <name>/<name>.npy: ignored
    assert index_media(tmp_path / "openface_face", "openface_face") == {"s1": face}
    with pytest.raises(ReleaseError, match="expected a MER2026 release root"):
        locate_release(tmp_path / "audio" / "audio_track1_train" / "audio")
