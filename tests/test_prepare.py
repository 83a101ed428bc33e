"""merjax/data/prepare.py: the one boundary from config.data to prepared records.

A prepared dataset answers exactly one release: another release, or the same one changed in
place, is prepared afresh (and so validated); a failed build leaves no folder behind.
"""
import os
import shutil

import numpy as np
import pytest
import scipy.io

from configs import ps as ps_config
from merjax.data import prepare
from merjax.tasks import ps as ps_task
from tfds_builders import common
from tfds_builders.mer_ps import demo as ps_demo
from tfds_builders.mer_ps import release as ps_release


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A 4-subject MER-PS release (:runlocal trains on 1-3, validates on 4) that passes for a
    real one (no demo marker)."""
    root = tmp_path_factory.mktemp("releases") / "clean"
    ps_demo.write_demo_release(root, seed=3, num_subjects=4, seconds=(2, 3))
    (root / ps_release.DEMO_MARKER).unlink()
    return root


def _config(manual_dir, tfds_dir):
    c = ps_config.get_config("runlocal")
    c.data.manual_dir, c.data.tfds_dir = str(manual_dir), str(tfds_dir)
    return c


def _labels(data):
    source = data.splits["train"]
    return np.stack([source[i]["label"] for i in range(len(source))])


def _copy(clean, path):
    shutil.copytree(clean, path)
    return path


def _rewrite_mat(path, edit):
    arrays = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    edit(arrays)
    scipy.io.savemat(path, arrays, format="5")


def _truncate(root):
    path = root / "data" / "test_2" / "EEG_videos.mat"
    path.write_bytes(path.read_bytes()[:-100])


def _label_300(root):
    def edit(arrays):
        arrays["video_3"][0, 1] = 300
    _rewrite_mat(root / "annotations" / "test_1_label.mat", edit)


def _nan(root):
    def edit(arrays):
        arrays["video_2"][5, 7] = np.nan
    _rewrite_mat(root / "data" / "test_1" / "EEG_videos.mat", edit)


def _missing_video(root):
    _rewrite_mat(root / "data" / "test_2" / "fNIRS_videos.mat", lambda a: a.pop("video_15"))


def _wrong_shape(root):
    def edit(arrays):
        arrays["video_1"] = arrays["video_1"][:60]
    _rewrite_mat(root / "data" / "test_1" / "EEG_videos.mat", edit)


def _no_subject(root):
    shutil.rmtree(root / "data" / "test_3")


@pytest.mark.parametrize("corrupt, message", [
    (_truncate, r"test_2/EEG_videos\.mat"),
    (_label_300, r"test_1_label\.mat: variable 'video_3' row 0 \(valence\) column 1.*300"),
    (_nan, r"test_1/EEG_videos\.mat: variable 'video_2'.*finite"),
    (_missing_video, r"test_2/fNIRS_videos\.mat: expected variables video_1\.\.video_15"),
    (_wrong_shape, r"test_1/EEG_videos\.mat: variable 'video_1': expected shape \[64, T\]"),
    (_no_subject, r"data/test_3: subject folder missing"),
])
def test_a_corrupted_copy_is_validated_not_answered_from_the_clean_records(
        clean, tmp_path, corrupt, message):
    tfds_dir = tmp_path / "tfds"
    reference = prepare.prepare(_config(clean, tfds_dir), ps_task)
    assert reference.release == "real" and len(reference.release_id) == 12
    broken = _copy(clean, tmp_path / "broken")
    corrupt(broken)
    with pytest.raises(common.ReleaseError, match=message):
        prepare.prepare(_config(broken, tfds_dir), ps_task)
    # Only the clean release's prepared dataset is there: the failed build left nothing.
    assert [p.name for p in (tfds_dir / "mer_ps").iterdir() if not p.name.startswith(".")] == [
        reference.builder_config.name]


def test_a_release_changed_in_place_is_prepared_afresh(clean, tmp_path):
    root, tfds_dir = _copy(clean, tmp_path / "release"), tmp_path / "tfds"
    first = prepare.prepare(_config(root, tfds_dir), ps_task)
    again = prepare.prepare(_config(root, tfds_dir), ps_task)
    assert again.release_id == first.release_id  # unchanged: the records are reused

    def edit(arrays):
        arrays["video_1"] = np.full_like(arrays["video_1"], 7)
    path = root / "annotations" / "test_1_label.mat"
    _rewrite_mat(path, edit)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse-clock file systems
    changed = prepare.prepare(_config(root, tfds_dir), ps_task)
    assert changed.release_id != first.release_id
    assert changed.builder_config.name != first.builder_config.name
    labels = {changed.splits["train"][i]["sample_id"].decode(): changed.splits["train"][i]["label"]
              for i in range(len(changed.splits["train"]))}
    assert np.all(labels["test_1_V01_T000"] == 7)
    assert not np.array_equal(_labels(changed), _labels(first))


def test_the_fingerprint_sees_names_sizes_and_times_not_hidden_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"1234")
    before = common.release_fingerprint([tmp_path / "a"])
    (tmp_path / "a" / ".DS_Store").write_bytes(b"junk")
    assert common.release_fingerprint([tmp_path / "a"]) == before
    (tmp_path / "a" / "x.bin").write_bytes(b"12345")
    assert common.release_fingerprint([tmp_path / "a"]) != before
    assert common.release_fingerprint([tmp_path / "nope"]) != before


def test_a_wrong_manual_dir_is_one_clear_error_and_leaves_nothing(tmp_path):
    tfds_dir = tmp_path / "tfds"
    with pytest.raises(common.ReleaseError, match=r"nowhere: config.data.manual_dir does not "
                                                  r"exist"):
        prepare.prepare(_config(tmp_path / "nowhere", tfds_dir), ps_task)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(common.ReleaseError, match=r"empty does not exist or is empty\. Pass it"):
        prepare.prepare(_config(empty, tfds_dir), ps_task)
    assert not tfds_dir.exists() or not any(tfds_dir.rglob("*"))


def test_demo_releases_are_announced_and_never_pass_for_real(tmp_path, caplog):
    config = _config("", tmp_path / "tfds")
    data = prepare.prepare(config, ps_task)
    assert data.release == "demo" and data.info.metadata["release"] == "demo"
    assert "DEMO DATA" in caplog.text
    demo_root = next((tmp_path / "tfds" / "merjax_demo").glob("mer_ps-*")) / "release"
    with pytest.raises(common.ReleaseError, match="is a generated demo release"):
        prepare.prepare(_config(demo_root, tmp_path / "tfds"), ps_task)
