"""Launchers: the sweep's grid expansion (config keys and variants), its checks, score collection,
failure classification and scaling table and plot; the build's flags."""
import csv
import json
import math
import os
import shlex
import subprocess
import sys

import pytest

from launch import scale, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grid_is_the_cartesian_product_in_order():
    points = sweep.parse_grid("optim.lr=1e-3, 3e-3; model.width=64,128")
    assert points == [{"optim.lr": "1e-3", "model.width": "64"},
                      {"optim.lr": "1e-3", "model.width": "128"},
                      {"optim.lr": "3e-3", "model.width": "64"},
                      {"optim.lr": "3e-3", "model.width": "128"}]
    assert sweep.parse_grid("") == [{}]
    assert sweep.point_name({"size": "M", "data.manual_dir": "/data/ps"}) == (
        "size=M,data.manual_dir=%2Fdata%2Fps")  # one folder, not nested ones
    with pytest.raises(ValueError, match="key=value1,value2"):
        sweep.parse_grid("optim.lr")
    with pytest.raises(ValueError, match="names a key twice"):
        sweep.parse_grid("a=1;a=2")


def test_commands_give_each_point_its_own_workdir(tmp_path):
    points = sweep.plan("configs/ps.py:runlocal", str(tmp_path), "seed=0,1")
    assert [p.workdir for p in points] == [str(tmp_path / "seed=0"), str(tmp_path / "seed=1")]
    assert points[1].argv[1:] == ["-m", "merjax.main", "--config=configs/ps.py:runlocal",
                                  f"--workdir={tmp_path / 'seed=1'}", "--config.seed=1"]


def test_a_grid_key_that_is_a_variant_of_the_config_file_joins_its_variants(tmp_path):
    points = sweep.plan("configs/ps.py:runlocal", str(tmp_path), "size=S,M;mesh.fsdp=1,2")
    assert [p.name for p in points] == ["size=S,mesh.fsdp=1", "size=S,mesh.fsdp=2",
                                        "size=M,mesh.fsdp=1", "size=M,mesh.fsdp=2"]
    assert points[3].argv[3:] == ["--config=configs/ps.py:runlocal,size=M",
                                  f"--workdir={tmp_path / 'size=M,mesh.fsdp=2'}",
                                  "--config.mesh.fsdp=2"]
    configs = [sweep.point_config(p) for p in points]  # as the points' commands parse them
    assert [(c.model.size, c.mesh.fsdp, c.total_steps) for c in configs] == [
        ("S", 1, 20), ("S", 2, 20), ("M", 1, 20), ("M", 2, 20)]  # runlocal's schedule kept
    assert configs[2].model.width > configs[0].model.width
    # A cluster launcher takes CONFIG WORKDIR [overrides] (launch/slurm.sbatch, tpu_vm.sh).
    (slurm,) = sweep.plan("configs/ps.py:real", str(tmp_path), "size=L;mesh.fsdp=8",
                          launcher="sbatch --nodes=2 launch/slurm.sbatch")
    assert slurm.argv == ["sbatch", "--nodes=2", "launch/slurm.sbatch", "configs/ps.py:real,size=L",
                          str(tmp_path / "size=L,mesh.fsdp=8"), "--config.mesh.fsdp=8"]
    # Any variant of any track, after the given ones; a config key stays an override.
    (point,) = sweep.plan("configs/cross.py:runlocal", str(tmp_path), "input_kind=raw;seed=3")
    assert point.config == "configs/cross.py:runlocal,input_kind=raw"
    assert point.overrides == {"seed": "3"} and point.variants["input_kind"] == "raw"
    with pytest.raises(ValueError, match=r"--grid key input_kind: variant input_kind is also "
                                         r"given in --config=configs/cross.py:input_kind=raw; "
                                         r"name it once"):
        sweep.plan("configs/cross.py:input_kind=raw", str(tmp_path), "input_kind=features")
    with pytest.raises(ValueError, match=r"--grid key sise: neither a key of the config nor a "
                                         r"variant of configs/ps.py \(Unknown config variant"):
        sweep.plan("configs/ps.py", str(tmp_path), "sise=M")
    with pytest.raises(ValueError, match="Unknown model size 'XXL'"):
        sweep.plan("configs/ps.py", str(tmp_path), "size=XXL")


def test_last_scores_reads_the_latest_value_of_each_metric(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(l) for l in [
        {"step": 10, "train/loss": 0.5}, {"step": 10, "fold": 1, "val/waf": 0.4},
        {"step": 20, "val/waf": 0.6, "cv/waf": 0.55}]) + "\n")
    assert sweep.last_scores(str(tmp_path)) == {"step": 20, "train/loss": 0.5, "val/waf": 0.6,
                                                "cv/waf": 0.55}
    assert sweep.last_scores(str(tmp_path / "missing")) == {}


def test_commands_pass_a_mode_other_than_train_to_every_point(tmp_path):
    points = sweep.plan("configs/ps.py", str(tmp_path), "seed=0,1", mode="evaluate")
    assert [p.argv[-1] for p in points] == ["--mode=evaluate"] * 2
    assert "--mode=train" not in sweep.plan("configs/ps.py", str(tmp_path), "seed=0")[0].argv


def test_grid_keys_and_values_are_checked_against_the_config_before_anything_runs(tmp_path):
    def check(grid):
        return [sweep.point_config(p) for p in sweep.plan("configs/ps.py", str(tmp_path), grid)]

    assert [c.optim.lr for c in check("optim.lr=1e-3,3e-3;model.width=64")] == [1e-3, 3e-3]
    with pytest.raises(ValueError, match="--grid key optim.lrr: the config has no key optim.lrr; "
                                         "did you mean optim.lr?"):
        check("model.width=64;optim.lrr=1e-3")
    with pytest.raises(ValueError, match="point batch_size=many: flag --config.batch_size=many: "
                                         "invalid literal for int"):
        check("batch_size=many")


def run(*args, tmp_path, timeout=120):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout,
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
    (("launch.sweep", "--config=configs/ps.py:runlocal,size=M", "--workdir={runs}",
      "--grid=size=S,L"),
     "launch.sweep: error: --grid key size: variant size is also given in "
     "--config=configs/ps.py:runlocal,size=M; name it once (see --help)"),
    (BUILD + ("--config.data.manul_dir=/x",),
     "launch.build: error: --config.data.manul_dir: the config has no key data.manul_dir; did "
     "you mean data.manual_dir?"),
    (BUILD + ("--mode=evaluate",),
     "launch.build: error: --mode is merjax.main's; launch.build takes only --config, "
     "--config.<key> overrides and --beam_runner/--beam_options (see --help)"),
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
        "raise SystemExit(7)']).returncode)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "7"


# XLA's own words for an allocation failure (GPU, TPU), as a failing point prints them.
XLA_OOM = ("jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to "
           "allocate 21474836480 bytes.\n")


def test_a_failed_point_is_oom_when_its_stderr_says_so_and_failed_otherwise():
    assert scale.status_of(0, "") == "ok"
    assert scale.status_of(1, "W external/xla/...\n" + XLA_OOM + "Traceback ...\n") == "oom"
    assert scale.status_of(1, "2026 ... OOM when allocating tensor with shape[64,1024]") == "oom"
    assert scale.status_of(1, "MemoryError: Unable to allocate 8.00 GiB") == "oom"
    assert scale.status_of(1, "merjax.main: error: config.batch_size=6 must divide by the 8 "
                              "batch shards") == "failed"
    assert scale.status_of(0, XLA_OOM) == "ok"  # a run that finished finished
    assert not scale.is_oom("booming rooms, zoom")  # words, not substrings


def test_a_points_stderr_is_streamed_through_and_kept_for_its_classification(capfd):
    code = (f"import sys; sys.stderr.write('step 1\\n' + {XLA_OOM!r} + 'Traceback (most recent "
            f"call last): ...\\n'); raise SystemExit(1)")
    result = sweep.run_point([sys.executable, "-c", code])
    assert result.returncode == 1 and scale.status_of(1, result.stderr) == "oom"
    assert sweep.error_line(result.stderr) == XLA_OOM.strip()
    assert capfd.readouterr().err.startswith("step 1\n" + XLA_OOM)  # the terminal saw it all
    failed = sweep.run_point([sys.executable, "-c", "import sys; sys.stderr.write("
                              "'I1126 log line\\nmerjax.main: error: no such file\\nbye\\n'); "
                              "raise SystemExit(1)"])
    assert scale.status_of(1, failed.stderr) == "failed"
    assert sweep.error_line(failed.stderr) == "merjax.main: error: no such file"


def _write_metrics(point_dir, rows):
    point_dir.mkdir(parents=True)
    (point_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_points_row_from_its_metrics(tmp_path):
    cost = {"step": 0, "cost/params": 1000.0, "cost/flops_per_step": 2e9,
            "cost/peak_memory_bytes_per_device": 5e6, "cost/peak_flops_per_s": 1e11,
            "cost/mesh_data": 4.0, "cost/mesh_fsdp": 2.0, "cost/mesh_model": 1.0}
    evals = [{"step": 10, "val/mae": 30.0, "inner/mae": 20.0},
             {"step": 20, "val/mae": 25.0, "inner/mae": 22.0}]  # the state of step 10 is kept
    kept = {"step": 10, "selected/val/mae": 30.0, "selected/inner/mae": 20.0}  # the loop's row
    perf = [{"step": s, "perf/steps_per_s": r} for s, r in ((5, 1.0), (10, 4.0), (15, 5.0),
                                                              (20, 2.0))]
    _write_metrics(tmp_path / "done", [cost, perf[0], perf[1], evals[0], *perf[2:], evals[1],
                                       kept])
    row = scale.row(str(tmp_path / "done"), "done", batch=16, total_steps=20,
                    select=("mae", "min"), size="M")
    step_time = (1 / 4 + 1 / 5 + 1 / 2) / 3  # the first flush (warm-up) left out
    assert row == dict(point="done", status="ok", size="M", params=1000, mesh="4x2x1", batch=16,
                       flops_per_step=2e9, step_time_s=pytest.approx(step_time),
                       samples_per_s=pytest.approx(16 / step_time),
                       mfu=pytest.approx(2e9 / step_time / 1e11),
                       peak_memory_bytes_per_device=5000000, score_name="val/mae", score=30.0,
                       note="")
    # Cross-validated: the summary's mean. Not: the kept state's row, the last one written (a
    # rerun writes it again); none before the run ends, whatever its evaluations say.
    assert scale.final_score([{"step": 5, "fold": 0, "val/waf": 0.5},
                              {"step": 5, "cv/waf": 0.6}], ("waf", "max")) == ("cv/waf", 0.6)
    assert scale.final_score([{"step": 5, "val/waf": 0.7}, {"step": 9, "val/waf": 0.6},
                              {"step": 5, "selected/val/waf": 0.7},
                              {"step": 9, "selected/val/waf": 0.65}],
                             ("waf", "max")) == ("val/waf", 0.65)
    assert scale.final_score([{"step": 5, "val/waf": 0.7}], ("waf", "max")) == (None, None)
    # A task that selects nothing keeps its last state: its first validation score (or mean).
    assert scale.final_score([{"step": 9, "selected/val/f1": 0.4, "selected/val/acc": 0.5}],
                             None) == ("val/acc", 0.5)
    assert scale.final_score([{"step": 9, "cv/f1": 0.4, "cv/acc": 0.5}], None) == ("cv/acc", 0.5)
    # Stopped halfway, and never started.
    _write_metrics(tmp_path / "half", [cost, perf[0], perf[1]])
    half = scale.row(str(tmp_path / "half"), "half", 16, 20, ("mae", "min"))
    assert (half["status"], half["note"], half["params"]) == (
        "not run", "stopped at step 10 of 20", 1000)
    # A launcher that only submitted the point (sbatch) exited 0: the metrics still decide.
    scale.write_status(str(tmp_path / "half"), "ok", 0)
    assert scale.row(str(tmp_path / "half"), "half", 16, 20, ("mae", "min"))["status"] == "not run"
    scale.write_status(str(tmp_path / "half"), "oom", 1, XLA_OOM.strip())
    assert scale.row(str(tmp_path / "half"), "half", 16, 20, ("mae", "min"))["note"] == (
        XLA_OOM.strip())
    never = scale.row(str(tmp_path / "never"), "never", 16, 20, ("mae", "min"))
    assert never["status"] == "not run" and never["params"] is None and never["mfu"] is None


def _scale_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_scaling_sweep_runs_its_points_and_tabulates_and_plots_them(tmp_path):
    """Two model sizes of the tiny MER-PS config on a 1-way and a 3-way fsdp mesh: 3 does not
    divide the 8 devices, so those two points fail (the sweep goes on and exits 1), and the
    table holds all four."""
    runs = tmp_path / "runs"
    proc = run("launch.sweep", "--config=configs/ps.py:runlocal", f"--workdir={runs}",
               "--grid=size=S,M;mesh.fsdp=1,3;total_steps=6;log_every=3", "--run",
               tmp_path=tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1].startswith("launch.sweep: error: 2 of 4 points failed")
    rows = _scale_csv(runs / "scale.csv")
    assert [r["point"] for r in rows] == [
        f"size={s},mesh.fsdp={f},total_steps=6,log_every=3" for s in "SM" for f in (1, 3)]
    assert list(rows[0]) == list(scale.COLUMNS)
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["size"] for r in ok] == ["S", "M"] and all(r["mesh"] == "8x1x1" for r in ok)
    assert int(ok[0]["params"]) < int(ok[1]["params"])
    assert int(ok[0]["peak_memory_bytes_per_device"]) < int(ok[1]["peak_memory_bytes_per_device"])
    for r in ok:
        assert r["batch"] == "16" and r["score_name"] == "val/mae"
        for key in ("flops_per_step", "step_time_s", "samples_per_s", "mfu", "score"):
            assert math.isfinite(float(r[key])) and float(r[key]) > 0, key
        assert float(r["samples_per_s"]) == pytest.approx(16 / float(r["step_time_s"]))
    for r in rows[1::2]:  # fsdp=3: the mesh is refused before anything is written
        assert (r["status"], r["params"], r["step_time_s"]) == ("failed", "", "")
        assert r["note"].startswith("merjax.main: error:") and "fsdp" in r["note"]
    png = runs / "scale.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib import image
    assert image.imread(str(png)).shape[1] > 1000  # three panels side by side

    # --summary rebuilds both from the points' files; a point never run is a row that says so.
    png.unlink()
    (runs / "scale.csv").unlink()
    proc = run("launch.sweep", "--config=configs/ps.py:runlocal", f"--workdir={runs}",
               "--grid=size=S,M,L;mesh.fsdp=1,3;total_steps=6;log_every=3", "--summary",
               tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = _scale_csv(runs / "scale.csv")
    assert again[:4] == rows and png.exists()
    assert [(r["size"], r["status"], r["params"]) for r in again[4:]] == [("L", "not run", "")] * 2
