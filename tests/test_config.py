"""Config handling: variants, unknown keys, the plainly named run keys of every track."""
import os
import subprocess
import sys

import pytest

from configs import common
from configs import ps as ps_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_KEYS = ("seed", "total_steps", "log_every", "eval_every", "checkpoint_every")


def test_ps_config_has_the_run_keys_and_a_small_runlocal_variant():
    full, local = ps_config.get_config(), ps_config.get_config("runlocal")
    for c in (full, local):
        for key in RUN_KEYS:
            assert key in c
        assert c.data.manual_dir == "" and set(c.mesh) >= {"data", "fsdp", "model"}
    assert local.total_steps < full.total_steps and local.model.width < full.model.width
    assert full.data.train_subjects == tuple(range(1, 21))
    assert full.data.validation_subjects == (21, 22, 23, 24)


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="Unknown config variant 'runlcal'"):
        ps_config.get_config("runlcal")
    assert common.parse_arg("n=3", n=1).n == 3


def test_unknown_config_key_on_the_command_line_is_an_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "merjax.main", "--config=configs/ps.py:runlocal",
         f"--workdir={tmp_path}", "--config.data.manul_dir=/x"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "manul_dir" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()
