"""Sweeps: one run per point of a grid of config overrides, then a table of their last scores.

  python -m launch.sweep --config=configs/ps.py --workdir=runs/ps_sweep \\
      --grid="optim.lr=1e-3,3e-3;model.width=64,128"            # prints the 4 commands
  python -m launch.sweep ... --run                               # runs them one after another
  python -m launch.sweep ... --summary                           # the table of finished runs

Each point gets its own workdir named by its overrides, so a rerun resumes the points that were
interrupted and skips nothing silently. For a cluster, hand the printed commands to your
scheduler (launch/slurm.sbatch runs one command over several hosts). --config, --workdir (here
the parent of the points' workdirs) and --mode are the training command's flags (merjax/main.py):
the config and every grid key are checked before anything runs, and --mode=evaluate (or predict,
export) is passed on to every point.
"""
import itertools
import json
import os
import shlex
import subprocess
import sys

from absl import app, flags

from merjax import cli
from merjax import main as train_command

for _name in ("config", "workdir", "mode"):
    flags.declare_key_flag(_name)  # listed by --help beside the sweep's own flags
_GRID = flags.DEFINE_string("grid", "", "'key=v1,v2;key2=w1,w2': the cartesian product is run.")
_RUN = flags.DEFINE_bool("run", False, "Run the commands here, one after another.")
_SUMMARY = flags.DEFINE_bool("summary", False, "Print the last scores of every point.")


def parse_grid(grid):
    """'a=1,2;b=x' -> [{'a': '1', 'b': 'x'}, {'a': '2', 'b': 'x'}] (in a stable order)."""
    axes = []
    for part in filter(None, (p.strip() for p in grid.split(";"))):
        key, sep, values = part.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"Grid axis {part!r} must look like key=value1,value2")
        axes.append((key.strip(), [v.strip() for v in values.split(",")]))
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"Grid {grid!r} names a key twice")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def point_name(overrides):
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "base"


def commands(config, workdir, grid, mode="train"):
    """[(point workdir, argv)] for every grid point."""
    out = []
    for overrides in parse_grid(grid):
        point_dir = os.path.join(workdir, point_name(overrides))
        argv = [sys.executable, "-m", "merjax.main", f"--config={config}",
                f"--workdir={point_dir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
        out.append((point_dir, argv + ([f"--mode={mode}"] if mode != "train" else [])))
    return out


def check_grid(config, grid):
    """Raises ValueError naming the first grid key that `config` lacks (before any run starts)."""
    for key in parse_grid(grid)[0]:  # every point has every key
        problem = cli.unknown_key(config, key)
        if problem:
            raise ValueError(f"--grid key {key}: {problem}")


def last_scores(point_dir):
    """The last value of every metric in a run's metrics.jsonl ({} if it has none yet)."""
    scores = {}
    path = os.path.join(point_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                scores.update({k: v for k, v in json.loads(line).items() if k != "fold"})
    return scores


def run_point(cmd):
    """Runs one point to its end and returns its exit status. A Ctrl-C reaches the point too
    (same process group) and it stops at a checkpoint of its current step, so the sweep waits
    for that rather than killing it as subprocess.run would."""
    with subprocess.Popen(cmd) as process:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                pass


def main(argv):
    del argv
    fixed = sorted(name for name in flags.FLAGS if name.startswith("config."))
    if fixed:
        raise app.UsageError(f"--{fixed[0]}: the points' commands would not carry it; make it "
                             f"a one-valued grid axis instead (--grid='{fixed[0][7:]}=...;...')")
    try:
        check_grid(train_command.CONFIG.value, _GRID.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    points = commands(flags.FLAGS["config"].config_filename, train_command.WORKDIR.value, _GRID.value,
                      train_command.MODE.value)
    failed = []
    for point_dir, cmd in points:
        if _SUMMARY.value:
            scores = last_scores(point_dir)
            shown = {k: round(v, 4) for k, v in scores.items() if k.startswith(("val/", "cv/"))}
            print(f"{os.path.basename(point_dir)}\tstep={scores.get('step')}\t{shown}")
        elif _RUN.value:
            print("running:", shlex.join(cmd), flush=True)
            status = run_point(cmd)
            if status < 0 or status >= 128:  # stopped by a signal: stop the sweep too
                cli.exit_with(f"stopped during {point_dir}; rerun the same command to resume",
                              status if status > 0 else 128 - status)
            if status:
                failed.append(os.path.basename(point_dir))
        else:
            print(shlex.join(cmd))
    if failed:  # each point's own error line is above; the others ran regardless
        cli.exit_with(f"error: {len(failed)} of {len(points)} points failed ({', '.join(failed)})"
                      f"; rerun the same command to retry them", 1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
