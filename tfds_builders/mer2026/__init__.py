"""Shared reader of the MER2026 release (tracks 1-3) and a seeded demo-release generator.

``release`` locates the release and reads media and MERTools features, ``csvs`` parses the
CSV files, ``demo`` writes a small synthetic release in the same layout.
"""
from .csvs import (PREFERENCES, SCHEMAS, TRACK1_LABELS, PreferenceRow, ReleaseError, Subtitle,
                   Track1Row, Track2Row, Track3CandidateRow, string_to_list)
from .release import (FACE_SHAPE, MODALITIES, SAMPLE_RATE, Mer2026Release, check_feature_dims,
                      index_features, index_media, locate_release, read_feature, read_openface,
                      read_wav, sample_faces)
from .demo import write_demo_release

__all__ = [
    "PREFERENCES", "SCHEMAS", "TRACK1_LABELS", "PreferenceRow", "ReleaseError", "Subtitle",
    "Track1Row", "Track2Row", "Track3CandidateRow", "string_to_list", "FACE_SHAPE", "MODALITIES",
    "SAMPLE_RATE", "Mer2026Release", "check_feature_dims", "index_features", "index_media",
    "locate_release", "read_feature", "read_openface", "read_wav", "sample_faces",
    "write_demo_release",
]
