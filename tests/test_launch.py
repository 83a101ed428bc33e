"""Launchers: the sweep's grid expansion, its checks and score collection; the build's flags."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from configs import ps as ps_config
from launch import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_commands_pass_a_mode_other_than_train_to_every_point(tmp_path):
    cmds = sweep.commands("configs/ps.py", str(tmp_path), "seed=0,1", mode="evaluate")
    assert [argv[-1] for _, argv in cmds] == ["--mode=evaluate"] * 2
    assert "--mode=train" not in sweep.commands("configs/ps.py", str(tmp_path), "seed=0")[0][1]


def test_grid_keys_are_checked_against_the_config_before_anything_runs():
    config = ps_config.get_config()
    sweep.check_grid(config, "optim.lr=1e-3,3e-3;model.width=64")
    with pytest.raises(ValueError, match="--grid key optim.lrr: the config has no key optim.lrr; "
                                         "did you mean optim.lr?"):
        sweep.check_grid(config, "model.width=64;optim.lrr=1e-3")


def run(*args, tmp_path):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env=dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds")))


def test_sweep_prints_one_command_per_point(tmp_path):
    proc = run("launch.sweep", "--config=configs/cross.py:real,input_kind=raw",
               f"--workdir={tmp_path}", "--grid=optim.lr=1e-3,3e-3", "--mode=evaluate",
               tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [shlex.join([
        sys.executable, "-m", "merjax.main", "--config=configs/cross.py:real,input_kind=raw",
        f"--workdir={tmp_path}/optim.lr={lr}", f"--config.optim.lr={lr}", "--mode=evaluate"])
        for lr in ("1e-3", "3e-3")]


SWEEP = ("launch.sweep", "--config=configs/ps.py:runlocal", "--workdir={runs}")
BUILD = ("launch.build", "--config=configs/ps.py:runlocal")


@pytest.mark.parametrize("args,line", [
    (SWEEP + ("--grid=optim.lrr=1e-3,3e-3",),
     "launch.sweep: error: --grid key optim.lrr: the config has no key optim.lrr; did you mean "
     "optim.lr? (see --help)"),
    (SWEEP + ("--grid=optim.lr",),
     "launch.sweep: error: Grid axis 'optim.lr' must look like key=value1,value2 (see --help)"),
    (SWEEP + ("--grid=seed=0,1", "--config.total_steps=5"),
     "launch.sweep: error: --config.total_steps: the points' commands would not carry it; make "
     "it a one-valued grid axis instead (--grid='total_steps=...;...') (see --help)"),
    (BUILD + ("--config.data.manul_dir=/x",),
     "launch.build: error: --config.data.manul_dir: the config has no key data.manul_dir; did "
     "you mean data.manual_dir?"),
    (BUILD + ("--mode=evaluate",),
     "launch.build: error: --mode is merjax.main's; launch.build takes only --config and "
     "--config.<key> overrides (see --help)"),
])
def test_launcher_mistakes_end_in_one_line(args, line, tmp_path):
    proc = run(*(a.format(runs=tmp_path / "runs") for a in args), tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [line]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tfds").exists()


def test_a_running_point_is_waited_for_through_a_ctrl_c(tmp_path):
    """A Ctrl-C reaches the point too, which checkpoints before it exits; the sweep must not
    kill it meanwhile (subprocess.run would, 0.25 s after the signal)."""
    script = (
        "import os, signal, sys, threading\n"
        "from launch import sweep\n"
        "threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "print(sweep.run_point([sys.executable, '-c', 'import time; time.sleep(1.5); "
        "raise SystemExit(7)']))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "7"
