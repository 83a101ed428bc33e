"""Sweeps: one run per point of a grid of config overrides, then a table of their last scores.

  python -m launch.sweep --config=configs/ps.py --workdir=runs/ps_sweep \
      --grid="optim.lr=1e-3,3e-3;model.width=64,128"            # prints the 4 commands
  python -m launch.sweep ... --run                               # runs them one after another
  python -m launch.sweep ... --summary                           # the table of finished runs

Each point gets its own workdir named by its overrides, so a rerun resumes the points that were
interrupted and skips nothing silently. For a cluster, hand the printed commands to your
scheduler (launch/slurm.sbatch runs one command over several hosts).
"""
import itertools
import json
import os
import shlex
import subprocess
import sys

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "Config file (with optional :variant).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent folder of the runs' workdirs.")
_GRID = flags.DEFINE_string("grid", "", "'key=v1,v2;key2=w1,w2': the cartesian product is run.")
_RUN = flags.DEFINE_bool("run", False, "Run the commands here, one after another.")
_SUMMARY = flags.DEFINE_bool("summary", False, "Print the last scores of every point.")
flags.mark_flags_as_required(["config", "workdir"])


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


def commands(config, workdir, grid):
    """[(point workdir, argv)] for every grid point."""
    out = []
    for overrides in parse_grid(grid):
        point_dir = os.path.join(workdir, point_name(overrides))
        argv = [sys.executable, "-m", "merjax.main", f"--config={config}",
                f"--workdir={point_dir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
        out.append((point_dir, argv))
    return out


def last_scores(point_dir):
    """The last value of every metric in a run's metrics.jsonl ({} if it has none yet)."""
    scores = {}
    path = os.path.join(point_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                scores.update({k: v for k, v in json.loads(line).items() if k != "fold"})
    return scores


def main(argv):
    del argv
    points = commands(_CONFIG.value, _WORKDIR.value, _GRID.value)
    for point_dir, cmd in points:
        if _SUMMARY.value:
            scores = last_scores(point_dir)
            shown = {k: round(v, 4) for k, v in scores.items() if k.startswith(("val/", "cv/"))}
            print(f"{os.path.basename(point_dir)}\tstep={scores.get('step')}\t{shown}")
        elif _RUN.value:
            print("running:", shlex.join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        else:
            print(shlex.join(cmd))


if __name__ == "__main__":
    app.run(main)
