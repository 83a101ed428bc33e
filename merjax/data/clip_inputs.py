"""The clip tracks' model inputs (MER-Cross, MER-FG, MER-Prefer), numpy only.

One home for turning what the builder stores for a clip (tfds_builders/mer2026/clips.py: arrays
zero-padded to fixed shapes with `<input>_length`, 0 = missing) into the arrays the model reads
and its exported signature takes: each input and its `<input>_mask`, so padding and missing
inputs are ignored alike. Training (merjax/tasks/*.py) and `python -m merjax.predict` both call
it, so no flax, grain or model code may be imported here.

`mods` below is the modalities table {input: (stem kind, input dim, padded length)}: kinds
`dense` (MERTools features [T, D]), `mel` (log-mel frames [T, M]), `faces` (uint8 crops
[N, S, S, 3]; dim S) and `bytes` (UTF-8 subtitle bytes as ids; dim 0).
"""
import numpy as np

# Input name -> stem kind, by the prepared dataset's input kind (features or raw).
STEMS = {"features": {"audio": "dense", "text": "dense", "video": "dense"},
         "raw": {"audio": "mel", "faces": "faces", "text": "bytes"}}
GROUP = 4  # mel frames and text bytes per token (models/fusion.py, models/text.py)
PAD = 0  # byte ids are shifted by one so 0 can mean padding
DESCRIPTIONS = ("a1", "a2")  # MER-Prefer's two descriptions of a clip


def round_up(n, m):
    return -(-n // m) * m


def encode(text, max_bytes):
    """str or bytes -> (ids [max_bytes] int32, mask [max_bytes] bool): byte + 1, 0 = padding."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    raw = raw[:max_bytes]
    ids = np.zeros(max_bytes, np.int32)
    ids[:len(raw)] = np.frombuffer(raw, np.uint8).astype(np.int32) + 1
    return ids, ids != PAD


def modalities(features):
    """The modalities table, read off a dataset's features ({name: object with `.shape`},
    e.g. a TFDS FeaturesDict): {name: (stem kind, input dim, padded input length)}."""
    stems = STEMS["features" if "video" in features else "raw"]
    out = {}
    for name, kind in stems.items():
        if kind == "dense":
            length, dim = features[name].shape
        elif kind == "mel":
            length, dim = round_up(features[name].shape[0], GROUP), features[name].shape[1]
        elif kind == "faces":
            length, dim = features[name].shape[0], features[name].shape[1]
        else:  # bytes: the zero-padded UTF-8 bytes beside the text
            length, dim = round_up(features["text_bytes"].shape[0], GROUP), 0
        out[name] = (kind, int(dim), int(length))
    return out


def input_names(mods):
    """The model's clip inputs: each modality and its mask (the exported signature's order)."""
    return tuple(k for m in mods for k in (m, f"{m}_mask"))


def inputs(example, mods):
    """A stored example's clip inputs -> {name: array, name_mask: bool array} at fixed shapes."""
    out = {}
    for name, (kind, _, length) in mods.items():
        if kind == "bytes":
            n = int(example["text_length"])
            out[name], out[f"{name}_mask"] = encode(
                np.asarray(example["text_bytes"])[:n].tobytes(), length)
        elif kind == "faces":  # faces_length: num_faces, or 0 when the clip has none
            out[name] = example[name]
            out[f"{name}_mask"] = np.arange(length) < int(example[f"{name}_length"])
        else:  # stored zero-padded at the end, with the count of real steps (0: missing)
            x = np.asarray(example[name], np.float32)
            padded = np.zeros((length,) + x.shape[1:], np.float32)
            padded[:len(x)] = x
            out[name] = padded
            out[f"{name}_mask"] = np.arange(length) < int(example[f"{name}_length"])
    return out


def descriptions(example, length):
    """MER-Prefer: the stored `<a1|a2>_bytes` (cut by the builder, with `<a1|a2>_length`) ->
    {a1, a1_mask, a2, a2_mask}: byte ids padded to `length` (the model's description length)."""
    out = {}
    for c in DESCRIPTIONS:
        n = int(example[f"{c}_length"])
        out[c], out[f"{c}_mask"] = encode(np.asarray(example[f"{c}_bytes"])[:n].tobytes(), length)
    return out


def description_names():
    """MER-Prefer's description inputs, after the clip inputs in the exported signature."""
    return tuple(k for c in DESCRIPTIONS for k in (c, f"{c}_mask"))
