"""A seeded, small *demo* MER2026 release in the exact layout of ``mer2026-dataset/``.

Every clip has a latent emotion (one of TRACK1_LABELS) that all its inputs carry, so a small
model can learn the tasks:

* audio: a harmonic tone whose pitch band (and loudness) depends on the class, plus noise;
* faces: an ellipse ("face") of a class colour on a grey background, jittered, plus noise;
  stored BGR like the real OpenFace npys;
* features: class-specific mean vector plus unit Gaussian noise, per feature folder;
* subtitles: class cue phrases among neutral filler, in Chinese and English.

Track 1 candidates are dyadic: the faces (and the visual feature) show the *listener*, whose
emotion is the candidate's label, while audio, text and their features carry the *speaker*'s,
possibly different, emotion. Train clips have listener == speaker, as the real train labels are
"same-person" ones. Track 3: the preferred description is the one whose emotion words match the
clip; ``same`` when both or neither do. The truth for candidates is written to ``demo_truth/``,
which no builder should read as labels. No ``video/`` is written (mp4 needs an encoder).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf

from .csvs import SCHEMAS, TRACK1_LABELS, iter_csv_rows

__all__ = ["write_demo_release", "read_demo_clips", "DemoClip", "DEMO_MARKER", "TRUTH_DIR",
           "EMOTION_WORDS", "DEMO_FEATURES", "DEMO_FRAME_FEATURE"]

DEMO_MARKER = "DEMO_RELEASE.txt"
TRUTH_DIR = "demo_truth"
SR = 16000
# Feature folder -> (D, which latent it carries). Dims as MERTools' extractors write them.
DEMO_FEATURES = {"chinese-hubert-base-UTT": (768, "speaker"),
                 "chinese-macbert-large-UTT": (1024, "speaker"),
                 "clip-vit-large-patch14-UTT": (768, "listener")}
DEMO_FRAME_FEATURE = "chinese-hubert-base-FRA"  # (T, 768); its time-mean is the -UTT file
FEATURE_SHIFT = 0.4  # per-dimension class-mean scale against unit noise

EMOTION_WORDS = {  # track-2 fine-grained vocabulary per class (real English emotion words)
    "neutral": ("neutral", "calm", "serious", "relaxed"),
    "angry": ("angry", "annoyed", "furious", "dissatisfied", "irritated"),
    "happy": ("happy", "joyful", "cheerful", "excited", "pleased"),
    "sad": ("sad", "disappointed", "upset", "let down", "heartbroken"),
    "worried": ("worried", "anxious", "concerned", "nervous", "on edge"),
    "surprise": ("surprised", "shocked", "astonished", "amazed", "taken aback"),
}
_ZH_CUES = {"neutral": ("按计划进行", "没什么特别的", "照常上班"),
            "angry": ("我真的很生气", "你太过分了", "气死我了"),
            "happy": ("太开心了", "真高兴", "好快乐啊"),
            "sad": ("我好难过", "真让人伤心", "太失望了"),
            "worried": ("我很担心", "怎么办才好", "心里不安"),
            "surprise": ("真没想到", "太惊讶了", "居然是这样")}
_EN_CUES = {"neutral": ("as planned", "nothing special", "just another day"),
            "angry": ("how dare you", "this is unacceptable", "I am so mad"),
            "happy": ("this is wonderful", "great news", "I love it"),
            "sad": ("I miss her so much", "it breaks my heart", "I feel so lost"),
            "worried": ("what if it fails", "I'm afraid", "I hope it's okay"),
            "surprise": ("no way", "I can't believe it", "really?")}
_ZH_FILLER = ("我们今天", "这个事情", "你知道吗", "然后", "就是说", "其实", "那个时候",
              "在家里")
_EN_FILLER = ("well", "you know", "today", "about this thing", "and then", "actually",
              "at that time", "at home")
_FACE_CUES = {"neutral": "keeps a relaxed, steady expression", "angry": "frowns and glares",
              "happy": "smiles broadly with raised cheeks", "sad": "looks down with drooping eyes",
              "worried": "knits the brows and bites the lip",
              "surprise": "opens the eyes and mouth wide"}
_VOICE_CUES = {"neutral": "the voice is even and unhurried", "angry": "the voice is loud and sharp",
               "happy": "the voice sounds bright and lively", "sad": "the voice is soft and low",
               "worried": "the voice trembles slightly", "surprise": "the voice rises suddenly"}
_FACE_RGB = {"neutral": (150, 150, 150), "angry": (205, 55, 45), "happy": (215, 195, 60),
             "sad": (55, 85, 195), "worried": (135, 75, 165), "surprise": (55, 185, 170)}
_F0 = {"neutral": 140.0, "angry": 240.0, "happy": 300.0, "sad": 110.0, "worried": 190.0,
       "surprise": 380.0}
_LOUD = {"neutral": 0.5, "angry": 0.8, "happy": 0.65, "sad": 0.35, "worried": 0.45, "surprise": 0.7}
_PREFIXES = (("sample_", 0.5), ("samplenew3_", 0.3), ("samplenew4_", 0.2))
# Counts at scale=1, sized for ~60 MB (faces dominate: T*112*112*3 bytes per clip).
_BASE = {"track1_train": 72, "candidates": 18, "track2_human": 30, "track2_mercaptionplus": 44,
         "track2_overlap": 6, "track3_emoprefer": 18, "track3_emopreferv2": 36,
         "track3_candidates": 24, "track3_repeats": 6}
_MIN = {"track1_train": 6, "candidates": 2, "track2_human": 2, "track2_mercaptionplus": 2,
        "track2_overlap": 1, "track3_emoprefer": 3, "track3_emopreferv2": 3,
        "track3_candidates": 3, "track3_repeats": 1}
_SUBSETS = ("track2_train_human", "track2_train_mercaptionplus", "track3", "track1_train",
            "track1_track2_candidate")  # nested layout: a clip goes to its first subset here


class DemoClip(NamedTuple):
    """Hidden truth of one demo clip (``demo_truth/clips.csv``)."""
    name: str
    speaker: str
    listener: str
    openset: tuple[str, ...]


def _rng(seed: int, *key: int) -> np.random.Generator:
    # Per-clip streams keyed by index: content does not depend on generation order or layout.
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _counts(scale: float, overrides: dict) -> dict[str, int]:
    c = {k: max(_MIN[k], int(round(v * scale))) for k, v in _BASE.items()}
    for k, v in overrides.items():
        if v is not None:
            if int(v) < _MIN[k]:
                raise ValueError(f"num_{k} must be >= {_MIN[k]}, got {v}")
            c[k] = int(v)
    c["track2_overlap"] = min(c["track2_overlap"], c["track2_human"] - 1,
                              c["track2_mercaptionplus"])
    c["track3_repeats"] = min(c["track3_repeats"], c["track3_candidates"] - 1)
    return c


def _names(rng, n: int) -> list[str]:
    prefixes = [p for p, _ in _PREFIXES]
    probs = [w for _, w in _PREFIXES]
    out: set[str] = set()
    while len(out) < n:
        p = prefixes[rng.choice(len(prefixes), p=probs)]
        out.add(f"{p}{int(rng.integers(1, 10**8)):08d}")
    return sorted(out)


def _sentence(rng, cues, filler, n_filler, joiner) -> str:
    parts = [str(x) for x in rng.choice(filler, n_filler, replace=False)]
    parts += [str(x) for x in rng.choice(cues, int(rng.integers(1, 3)), replace=False)]
    rng.shuffle(parts)
    return joiner.join(parts)


def _subtitle(rng, cls: str, empty_english: bool) -> tuple[str, str]:
    zh = _sentence(rng, _ZH_CUES[cls], _ZH_FILLER, int(rng.integers(1, 4)), "，") + "。"
    if empty_english:
        return zh, ""
    en = _sentence(rng, _EN_CUES[cls], _EN_FILLER, int(rng.integers(1, 4)), ", ")
    style = rng.random()
    if style < 0.15:  # quotes and a line break exercise CSV quoting
        en = f'He said "{en}".\nThen silence.'
    elif style < 0.3:
        en = f'"{en}," she said.'
    return zh, en[0].upper() + en[1:]


def _describe(rng, cls: str) -> str:
    w = [str(x) for x in rng.choice(EMOTION_WORDS[cls], 2, replace=False)]
    cue = str(rng.choice(_EN_CUES[cls]))
    opener = str(rng.choice(("In the video, the character", "The person on screen", "The speaker")))
    return (f"{opener} {_FACE_CUES[cls]}, and {_VOICE_CUES[cls]}. The subtitle says \"{cue}\", "
            f"so overall the character seems {w[0]} and {w[1]}.")


def _pair(rng, cls: int, pref: str) -> tuple[str, str]:
    """Descriptions a1, a2 for a clip of class ``cls`` such that ``pref`` is the truth."""
    others = [k for k in range(6) if k != cls]
    def other():
        return TRACK1_LABELS[int(rng.choice(others))]
    me = TRACK1_LABELS[cls]
    if pref == "a1":
        return _describe(rng, me), _describe(rng, other())
    if pref == "a2":
        return _describe(rng, other()), _describe(rng, me)
    if rng.random() < 0.5:  # 'same': both match ...
        return _describe(rng, me), _describe(rng, me)
    return _describe(rng, other()), _describe(rng, other())  # ... or neither does


def _prefs(rng, n: int, p_same: float) -> list[str]:
    n_same = max(1, int(round(n * p_same)))
    n_a1 = (n - n_same + int(rng.integers(0, 2))) // 2
    out = ["same"] * n_same + ["a1"] * n_a1 + ["a2"] * (n - n_same - n_a1)
    rng.shuffle(out)
    return out


def _audio(rng, cls: str, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    f0 = _F0[cls] * math.exp(rng.normal(0.0, 0.04))
    vibrato = 1.0 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 6) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / SR
    tone = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)
    rate, offset = rng.uniform(2.5, 5), rng.uniform(0, 6)
    syllables = np.clip(0.3 + 0.7 * np.sin(2 * np.pi * rate * t + offset), 0, 1)
    x = _LOUD[cls] * 0.5 * tone * syllables + rng.normal(0.0, 0.03, n)
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * SR))
    return np.clip(x * fade, -0.99, 0.99).astype(np.float32)


_YY, _XX = np.mgrid[0:112, 0:112].astype(np.float32)


def _faces(rng, cls: str, frames: int) -> np.ndarray:
    """uint8 [T,112,112,3] in BGR (reverse of the RGB drawn here), like cv2.imread output."""
    rgb = np.clip(np.array(_FACE_RGB[cls]) + rng.integers(-12, 13, 3), 0, 223).astype(np.uint8)
    bg = np.uint8(rng.integers(40, 80))
    out = np.empty((frames, 112, 112, 3), np.uint8)
    cx, cy = 56 + rng.normal(0, 2), 56 + rng.normal(0, 2)
    for i in range(frames):
        dx, dy = rng.normal(0, 1.5, 2)
        inside = ((_XX - cx - dx) / 38) ** 2 + ((_YY - cy - dy) / 48) ** 2 <= 1.0
        out[i] = np.where(inside[..., None], rgb, bg)
    out += rng.integers(0, 32, out.shape, dtype=np.uint8)  # values stay <= 254: no wrap-around
    return np.ascontiguousarray(out[..., ::-1])


def _write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")  # pandas.to_csv style: \n, minimal quoting
        w.writerow(header)
        w.writerows(rows)


def _plan(seed: int, c: dict[str, int]):
    """All metadata: names, latents, CSV rows. Media are drawn later from per-clip streams."""
    rng = _rng(seed, 0)
    n_rest = max(c["track1_train"],
                 c["track2_human"] - 1 + c["track2_mercaptionplus"] - c["track2_overlap"],
                 c["track3_emoprefer"] + c["track3_emopreferv2"]
                 + c["track3_candidates"] - c["track3_repeats"])
    names = _names(rng, c["candidates"] + n_rest)
    order = [names[i] for i in rng.permutation(len(names))]
    cand, rest = order[:c["candidates"]], order[c["candidates"]:]
    speaker, listener = {}, {}
    for i, n in enumerate(rest):  # balanced classes; train = a prefix of `rest`
        speaker[n] = listener[n] = i % 6
    for i, n in enumerate(cand):  # dyadic: listener is the label, speaker differs 60% of the time
        listener[n] = i % 6
        diff = rng.random() < 0.6
        speaker[n] = int((i % 6 + rng.integers(1, 6)) % 6) if diff else i % 6
    train1 = rest[:c["track1_train"]]

    def pick(pool, k):
        return [pool[i] for i in sorted(rng.choice(len(pool), k, replace=False))]
    human = pick(rest, c["track2_human"] - 1) + [cand[0]]  # one candidate overlaps, as in reality
    human_set = set(human)
    not_human = [n for n in rest if n not in human_set]
    mcp = (pick(human[:-1], c["track2_overlap"])
           + pick(not_human, c["track2_mercaptionplus"] - c["track2_overlap"]))
    t3 = [str(x) for x in rng.permutation(rest)]
    a, b = c["track3_emoprefer"], c["track3_emopreferv2"]
    ep, ep2 = t3[:a], t3[a:a + b]
    t3c = t3[a + b:a + b + c["track3_candidates"] - c["track3_repeats"]]
    t3c = t3c + [t3c[int(i)] for i in rng.integers(0, len(t3c), c["track3_repeats"])]
    for lst in (train1, human, mcp, t3c):
        rng.shuffle(lst)
    words = {}
    for n in names:
        vocab = EMOTION_WORDS[TRACK1_LABELS[speaker[n]]]
        k = int(rng.integers(2, min(4, len(vocab)) + 1))
        words[n] = tuple(str(w) for w in rng.choice(vocab, k, replace=False))
    return dict(names=names, cand=cand, train1=train1, human=human, mcp=mcp, ep=ep, ep2=ep2,
                t3c=t3c, speaker=speaker, listener=listener, words=words, rng=rng)


def _write_csvs(root: Path, p: dict) -> None:
    rng, sp, lab = p["rng"], p["speaker"], TRACK1_LABELS
    names = p["names"]
    empty_en = {names[i] for i in rng.choice(len(names), max(1, len(names) // 12), replace=False)}
    subs = [(n, *_subtitle(rng, lab[sp[n]], n in empty_en)) for n in names]
    _write_csv(root / "subtitle_chieng.csv", SCHEMAS["subtitle_chieng.csv"], subs)
    _write_csv(root / "track1_train.csv", SCHEMAS["track1_train.csv"],
               [(n, lab[sp[n]]) for n in p["train1"]])
    _write_csv(root / "track1_track2_candidate.csv", ("name",), [(n,) for n in p["cand"]])
    _write_csv(root / "track2_train_human.csv", SCHEMAS["track2_train_human.csv"],
               [(n, ",".join(p["words"][n])) for n in p["human"]])  # human form: a,b,c
    mcp_rows = []
    for n in p["mcp"]:
        vocab = EMOTION_WORDS[lab[sp[n]]]
        w = [str(x) for x in rng.choice(vocab, int(rng.integers(1, 4)), replace=False)]
        # list form [a, b] as in the real file; some quoted ['a', 'b'] rows too
        mcp_rows.append((n, "[" + ", ".join(f"'{x}'" for x in w) + "]" if rng.random() < 0.25
                         else "[" + ", ".join(w) + "]"))
    _write_csv(root / "track2_train_mercaptionplus.csv",
               SCHEMAS["track2_train_mercaptionplus.csv"], mcp_rows)
    for fname, key, p_same in (("track3_emoprefer.csv", "ep", 0.1),
                               ("track3_emopreferv2.csv", "ep2", 0.25)):
        rows = [(n, *_pair(rng, sp[n], pref), pref)
                for n, pref in zip(p[key], _prefs(rng, len(p[key]), p_same))]
        _write_csv(root / fname, SCHEMAS[fname], rows)
    truth3 = [(n, *_pair(rng, sp[n], pref), pref)
              for n, pref in zip(p["t3c"], _prefs(rng, len(p["t3c"]), 0.2))]
    _write_csv(root / "track3_candidate.csv", SCHEMAS["track3_candidate.csv"],
               [r[:3] for r in truth3])
    truth = root / TRUTH_DIR
    _write_csv(truth / "track3_candidates.csv", SCHEMAS["track3_emoprefer.csv"], truth3)
    _write_csv(truth / "track1_candidates.csv", ("name", "discrete"),
               [(n, lab[p["listener"][n]]) for n in p["cand"]])
    _write_csv(truth / "track2_candidates.csv", ("name", "openset"),
               [(n, ",".join(p["words"][n])) for n in p["cand"]])
    _write_csv(truth / "clips.csv", ("name", "speaker", "listener", "openset"),
               [(n, lab[sp[n]], lab[p["listener"][n]], ",".join(p["words"][n])) for n in names])


def _write_media(root: Path, p: dict, seed: int, layout: str, face_frames, audio_seconds,
                 features: bool) -> None:
    members = [(s, set(p[k])) for s, k in zip(_SUBSETS, ("human", "mcp", "t3", "train1", "cand"))]
    dims = {fd: d for fd, (d, _) in DEMO_FEATURES.items()}
    fra_dim = dims["chinese-hubert-base-UTT"]
    means = {fd: _rng(seed, 1, j).normal(0, FEATURE_SHIFT, (6, d))
             for j, (fd, d) in enumerate(dims.items())}
    means[DEMO_FRAME_FEATURE] = means["chinese-hubert-base-UTT"]  # UTT is the mean of FRA
    for ci, n in enumerate(p["names"]):
        spk, lst = TRACK1_LABELS[p["speaker"][n]], TRACK1_LABELS[p["listener"][n]]
        r = _rng(seed, 2, ci)
        sub = next(s for s, m in members if n in m)
        if layout == "flat":
            wav, face = root / "audio" / f"{n}.wav", root / "openface_face" / n / f"{n}.npy"
        else:
            wav = root / "audio" / f"audio_{sub}" / "audio" / f"{n}.wav"
            face = root / "openface_face" / f"openface_{sub}" / "openface_face" / n / f"{n}.npy"
        seconds = r.uniform(*audio_seconds)
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(wav), _audio(r, spk, int(seconds * SR)), SR, subtype="PCM_16")
        face.parent.mkdir(parents=True, exist_ok=True)
        np.save(face, _faces(r, lst, int(r.integers(face_frames[0], face_frames[1] + 1))))
        if not features:
            continue
        fr = _rng(seed, 3, ci)
        t = max(2, int(round(seconds * 10)))  # 10 Hz frames (real HuBERT: 50 Hz) keeps files small
        fra = means[DEMO_FRAME_FEATURE][p["speaker"][n]] + fr.normal(0, 1, (t, fra_dim))
        fra = fra.astype(np.float32)
        out = {DEMO_FRAME_FEATURE: fra, "chinese-hubert-base-UTT": fra.mean(axis=0)}
        for fd, (d, who) in DEMO_FEATURES.items():
            if fd not in out:
                k = p[who][n]
                out[fd] = (means[fd][k] + fr.normal(0, 1, d)).astype(np.float32)
        for fd, arr in out.items():
            (root / "features" / fd).mkdir(parents=True, exist_ok=True)
            np.save(root / "features" / fd / f"{n}.npy", arr)


_README = """# MER2026 demo release (generated, not real data)

Written by `tfds_builders.mer2026.demo.write_demo_release`; arguments are in `{marker}`.
Same arguments give byte-identical files. Layout and CSV schemas follow the real
`mer2026-dataset/` (the official release); layout here: `{layout}`.

- `audio/`: 16 kHz mono PCM16 wavs, 1-2 s. `openface_face/`: uint8 [T,112,112,3] BGR npys.
- `video/` is absent: mp4 cannot be encoded without ffmpeg.
- `features/`: MERTools-style folders {features}.
- Each clip has a latent emotion carried by every input (pitch band, face colour, feature
  mean direction, subtitle cue words). Track-1 candidates are dyadic: faces and the clip
  feature show the listener (the label), audio/text the speaker (often different).
- `{truth}/` holds the hidden truth for candidates and all latents. Demo only: builders must
  not read it as labels.
"""


def write_demo_release(
        root, *, seed: int = 0, scale: float = 1.0, layout: str = "flat",
        num_track1_train: int | None = None, num_candidates: int | None = None,
        num_track2_human: int | None = None, num_track2_mercaptionplus: int | None = None,
        num_track2_overlap: int | None = None, num_track3_emoprefer: int | None = None,
        num_track3_emopreferv2: int | None = None, num_track3_candidates: int | None = None,
        num_track3_repeats: int | None = None, face_frames: tuple[int, int] = (8, 20),
        audio_seconds: tuple[float, float] = (1.0, 2.0), features: bool = True) -> Path:
    """Write a demo release into ``root`` (created; must be empty) and return its path.

    ``scale`` multiplies the default counts (scale=1: 72 track-1 train, 18 candidates, 30 + 44
    track-2 train with 6 names in both, 18 + 36 track-3 pairs, 24 track-3 candidate rows of
    which 6 repeat a name; 90 clips, about 58 MB, ~2 s); ``num_*`` override single counts.
    Clips are shared between tracks (one pool, as in the real release), so the clip count is
    candidates + the largest per-track need, not the sum of all rows.
    ``layout='nested'`` puts media in per-subset folders as the HF archives extract.
    """
    if layout not in ("flat", "nested"):
        raise ValueError(f"layout must be 'flat' or 'nested', got {layout!r}")
    if not 1 <= face_frames[0] <= face_frames[1] or not 0 < audio_seconds[0] <= audio_seconds[1]:
        raise ValueError(f"expected 1 <= face_frames[0] <= face_frames[1] and 0 < audio_seconds[0] "
                         f"<= audio_seconds[1], got {face_frames}, {audio_seconds}")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: expected a new or empty folder for the demo release")
    counts = _counts(scale, dict(
        track1_train=num_track1_train, candidates=num_candidates, track2_human=num_track2_human,
        track2_mercaptionplus=num_track2_mercaptionplus, track2_overlap=num_track2_overlap,
        track3_emoprefer=num_track3_emoprefer, track3_emopreferv2=num_track3_emopreferv2,
        track3_candidates=num_track3_candidates, track3_repeats=num_track3_repeats))
    root.mkdir(parents=True, exist_ok=True)
    plan = _plan(seed, counts)
    plan["t3"] = plan["ep"] + plan["ep2"] + plan["t3c"]
    _write_csvs(root, plan)
    _write_media(root, plan, seed, layout, face_frames, audio_seconds, features)
    args = dict(seed=seed, scale=scale, layout=layout, face_frames=list(face_frames),
                audio_seconds=list(audio_seconds), features=features, counts=counts,
                clips=len(plan["names"]))
    (root / DEMO_MARKER).write_text(
        "Generated MER2026 demo release, not real data.\n"
        + json.dumps(args, sort_keys=True) + "\n", encoding="utf-8")
    feats = ", ".join(f"`{k}`" for k in [*DEMO_FEATURES, DEMO_FRAME_FEATURE])
    readme = _README.format(marker=DEMO_MARKER, layout=layout,
                            features=feats if features else "(none)", truth=TRUTH_DIR)
    (root / "README.md").write_text(readme, encoding="utf-8")
    return root


def read_demo_clips(root) -> dict[str, DemoClip]:
    """Hidden per-clip truth of a demo release: speaker/listener class and track-2 words."""
    path = Path(root) / TRUTH_DIR / "clips.csv"
    rows = iter_csv_rows(path, ("name", "speaker", "listener", "openset"))
    return {d["name"]: DemoClip(d["name"], d["speaker"], d["listener"],
                                tuple(d["openset"].split(","))) for _, _, d in rows}
