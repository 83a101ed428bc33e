"""Launchers: the sweep's grid expansion and score collection."""
import json

import pytest

from launch import sweep


def test_grid_is_the_cartesian_product_in_order():
    points = sweep.parse_grid("optim.lr=1e-3, 3e-3; model.width=64,128")
    assert points == [{"optim.lr": "1e-3", "model.width": "64"},
                      {"optim.lr": "1e-3", "model.width": "128"},
                      {"optim.lr": "3e-3", "model.width": "64"},
                      {"optim.lr": "3e-3", "model.width": "128"}]
    assert sweep.parse_grid("") == [{}]
    with pytest.raises(ValueError, match="key=value1,value2"):
        sweep.parse_grid("optim.lr")
    with pytest.raises(ValueError, match="names a key twice"):
        sweep.parse_grid("a=1;a=2")


def test_commands_give_each_point_its_own_workdir(tmp_path):
    cmds = sweep.commands("configs/ps.py:runlocal", str(tmp_path), "seed=0,1")
    assert [d for d, _ in cmds] == [str(tmp_path / "seed=0"), str(tmp_path / "seed=1")]
    argv = cmds[1][1]
    assert argv[1:] == ["-m", "merjax.main", "--config=configs/ps.py:runlocal",
                        f"--workdir={tmp_path / 'seed=1'}", "--config.seed=1"]


def test_last_scores_reads_the_latest_value_of_each_metric(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(l) for l in [
        {"step": 10, "train/loss": 0.5}, {"step": 10, "fold": 1, "val/waf": 0.4},
        {"step": 20, "val/waf": 0.6, "cv/waf": 0.55}]) + "\n")
    assert sweep.last_scores(str(tmp_path)) == {"step": 20, "train/loss": 0.5, "val/waf": 0.6,
                                                "cv/waf": 0.55}
    assert sweep.last_scores(str(tmp_path / "missing")) == {}
