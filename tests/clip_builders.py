"""What the tests of the clip-track builders (MER-Cross, MER-FG, MER-Prefer) share: the
`config.data` they derive a BuilderConfig from, a build cache, and plain CSV reading/writing
(expected values are recomputed from the release files with csv, never through the builders'
own readers)."""
import csv

import ml_collections

from merjax.data import prepare
from tfds_builders.mer2026 import clips


def clip_data(**overrides):
    """config.data as a clip track's config holds it (the keys builder_config reads)."""
    data = dict(input_kind="features", features_root="", feature_dims=(), feature_level="utt",
                max_frames=32, features=dict(zip(clips.ROLES, clips.FEATURE_DIRS)), n_mels=80,
                max_audio_s=1.5, num_faces=4, face_size=32, text_language="english",
                max_text_bytes=48, on_missing="error")
    data.update(overrides)
    return ml_collections.ConfigDict(data)


def build_cache(builder_cls, tmp_path_factory):
    """build(root, config) -> the builder, built once per (release, config) in a session."""
    done = {}

    def build(root, config):
        key = (str(root), config.name)
        if key not in done:
            done[key] = prepare.build(builder_cls, config, manual_dir=root, num_shards=2,
                                      data_dir=tmp_path_factory.mktemp("tfds"))
        return done[key]
    return build


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
