"""The cluster launchers, up to the command lines they produce: launch/slurm.sbatch under a fake
`srun` and launch/tpu_vm.sh under a fake `gcloud` (and the workers' shell), both printing what
they were given. tests/test_multiprocess.py runs what these commands start."""
import json
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A value with spaces, quotes and a `$` a shell would expand: it must arrive as one argument.
AWKWARD = "/data/MER PS 'release' $HOME"


def fake(bin_dir, name):
    """An executable `name` that prints its argv (and JAX_LOCAL_DEVICE_IDS) as one JSON line."""
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps(dict(argv=sys.argv[1:], "
                    "devices=os.environ.get('JAX_LOCAL_DEVICE_IDS'))))\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def launch(script, *args, tmp_path, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("srun", "gcloud", "python", "python3"):
        fake(bin_dir, name)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "JAX_LOCAL_DEVICE", "MERJAX_"))}
    return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=dict(clean, PATH=f"{bin_dir}:{clean['PATH']}", **env))


def printed(proc):
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    return json.loads(line)


def test_slurm_runs_one_merjax_process_per_node_with_every_gpu(tmp_path):
    proc = launch("slurm.sbatch", "configs/ps.py:real", "runs/ps 2 nodes",
                  f"--config.data.manual_dir={AWKWARD}", "--config.seed=3",
                  tmp_path=tmp_path, SLURM_GPUS_ON_NODE="4")
    assert printed(proc) == dict(devices="0,1,2,3", argv=[
        "python", "-m", "merjax.main", "--config=configs/ps.py:real",
        "--workdir=runs/ps 2 nodes", f"--config.data.manual_dir={AWKWARD}", "--config.seed=3",
        "--config.distributed=True"])
    # Without SLURM_GPUS_ON_NODE (older Slurm), the count --gpus-per-node gave.
    proc = launch("slurm.sbatch", "configs/cross.py", "runs/x", tmp_path=tmp_path,
                  SLURM_GPUS_PER_NODE="a100:2")
    assert printed(proc)["devices"] == "0,1"


def test_slurm_directives_ask_for_one_task_per_node_and_a_warning_signal():
    with open(os.path.join(ROOT, "launch", "slurm.sbatch")) as f:
        directives = [line.split(None, 1)[1].strip() for line in f if line.startswith("#SBATCH")]
    assert {"--ntasks-per-node=1", "--gpus-per-node=8", "--signal=TERM@120"} <= set(directives)


@pytest.mark.parametrize("args,env,message", [
    (("configs/ps.py",), {"SLURM_GPUS_ON_NODE": "8"}, "usage: sbatch"),
    (("configs/ps.py", "runs/ps"), {}, "no GPU count in SLURM_GPUS_ON_NODE"),
])
def test_slurm_mistakes_stop_before_srun(args, env, message, tmp_path):
    proc = launch("slurm.sbatch", *args, tmp_path=tmp_path, **env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert message in proc.stderr


@pytest.mark.parametrize("env,directory,python", [
    ({}, "merjax", "python3"),
    ({"MERJAX_DIR": "code/mer jax", "MERJAX_PYTHON": "venv/bin/python"}, "code/mer jax",
     "venv/bin/python"),
])
def test_tpu_vm_runs_the_same_command_on_every_worker(env, directory, python, tmp_path):
    proc = launch("tpu_vm.sh", "my-tpu", "us-central2-b", "configs/cross.py:real",
                  "/mnt/runs/cross real", f"--config.data.manual_dir={AWKWARD}",
                  tmp_path=tmp_path, **env)
    gcloud = printed(proc)["argv"]
    assert gcloud[:7] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-central2-b",
                          "--worker=all"]
    (command,) = gcloud[7:]
    assert command.startswith("--command=")
    # What a worker's shell makes of it: a fake home holding the repository and the python.
    home = tmp_path / "home"
    (home / directory).mkdir(parents=True)
    if "/" in python:
        (home / directory / os.path.dirname(python)).mkdir(parents=True)
        fake(home / directory / os.path.dirname(python), os.path.basename(python))
    worker = subprocess.run(["bash", "-c", command.removeprefix("--command=")], cwd=home,
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, HOME=str(home),
                                     PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}"))
    assert printed(worker)["argv"] == [
        "-m", "merjax.main", "--config=configs/cross.py:real", "--workdir=/mnt/runs/cross real",
        f"--config.data.manual_dir={AWKWARD}", "--config.distributed=True"]


def test_tpu_vm_needs_its_four_arguments(tmp_path):
    proc = launch("tpu_vm.sh", "my-tpu", "us-central2-b", "configs/ps.py", tmp_path=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR" in proc.stderr


@pytest.mark.parametrize("name,extra", [("requirements-gpu.txt", "cuda12"),
                                        ("requirements-tpu.txt", "tpu")])
def test_accelerator_requirements_follow_the_pinned_jax(name, extra):
    """requirements-gpu/-tpu.txt add the accelerator extra at requirements.txt's jax version,
    an extra that jax version declares (it pins the plugin or libtpu built for it)."""
    def lines(file):
        with open(os.path.join(ROOT, file)) as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]

    (pin,) = [line for line in lines("requirements.txt") if line.startswith("jax==")]
    version = pin.removeprefix("jax==")
    assert lines(name) == ["-r requirements.txt", f"jax[{extra}]=={version}"]
    from importlib import metadata
    assert metadata.version("jax") == version
    assert any(f'extra == "{extra}"' in r for r in metadata.requires("jax"))


def test_distributed_outside_a_cluster_ends_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "TPU_", "KUBERNETES_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "merjax.main", "--config=configs/ps.py:runlocal",
         f"--workdir={tmp_path / 'run'}", "--config.distributed=True"], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
        env=dict(env, JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(tmp_path / "tfds")))
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = proc.stderr.splitlines()[-1]
    assert line.startswith("merjax.main: error: config.distributed=True, but "
                           "jax.distributed.initialize() found no cluster environment it knows")
    assert line.endswith("start every process with srun (launch/slurm.sbatch), mpirun or on a "
                         "Cloud TPU VM (launch/tpu_vm.sh), or leave config.distributed False for "
                         "one process")
    assert not (tmp_path / "run").exists() and not (tmp_path / "tfds").exists()
