"""Sweeps: one run per point of a grid of config keys and variants, then a table of their last
scores, and a scaling table and plot of what each point cost.

  python -m launch.sweep --config=configs/ps.py --workdir=runs/ps_sweep \\
      --grid="optim.lr=1e-3,3e-3;model.width=64,128"            # prints the 4 commands
  python -m launch.sweep ... --run                               # runs them one after another
  python -m launch.sweep ... --summary                           # the table of finished runs
  python -m launch.sweep --config=configs/ps.py:runlocal --workdir=runs/scale \\
      --grid="size=S,M,L;mesh.fsdp=1,2" --run                    # + scale.csv and scale.png

A grid key is a key of the config (`optim.lr`, `seed`; each point's command gets
--config.<key>=<value>) or, where the config has no such key, a variant of the config file
(`size`, `input_kind`: merged into the point's --config=<file>:<variants> after the variants
given there; a variant both given and in the grid is an error). Each point gets its own workdir
named by its grid values, so a rerun resumes the points that were interrupted and skips nothing
silently. For a cluster, --launcher prints each point as a launcher's command, to pipe into a
shell (`... --launcher="sbatch --nodes=2 launch/slurm.sbatch" | bash`: one Slurm job a point),
or, with --run, to run one after another (`--launcher="launch/tpu_vm.sh my-tpu us-central2-b"`
runs each on every worker of a TPU slice, streaming its stderr back); `--summary` then tabulates
them wherever their workdirs are. --config, --workdir (here the parent of the points' workdirs)
and --mode are the training command's flags (merjax/main.py): the config and every point's keys
and values are checked before anything runs, and --mode=evaluate (or predict, export) is passed
on to every point.

After --run, and with --summary (e.g. on a laptop, over workdirs a cluster wrote), the sweep
writes <workdir>/scale.csv and scale.png (launch/scale.py): per point its parameters, mesh,
batch, FLOPs/step, step time, samples/s, MFU, peak memory and final validation score, and its
status: "ok", "oom" (it failed with an allocation failure: its stderr, streamed to the terminal,
is searched for one), "failed" or "not run". A failing point does not stop the others; the sweep
exits 1 if a point failed (an out-of-memory point is a result, not a failure).
"""
import collections
import dataclasses
import functools
import importlib.util
import itertools
import os
import shlex
import subprocess
import sys
import threading

from absl import app, flags
from ml_collections import config_flags

from launch import scale
from merjax import cli, tasks
from merjax import main as train_command

for _name in ("config", "workdir", "mode"):
    flags.declare_key_flag(_name)  # listed by --help beside the sweep's own flags
_GRID = flags.DEFINE_string("grid", "", "'key=v1,v2;key2=w1,w2': the cartesian product is run.")
_RUN = flags.DEFINE_bool("run", False, "Run the commands here, one after another.")
_LAUNCHER = flags.DEFINE_string(
    "launcher", "", "Start each point with this command followed by CONFIG WORKDIR [overrides] "
    "(e.g. 'sbatch --nodes=2 launch/slurm.sbatch', 'launch/tpu_vm.sh my-tpu us-central2-b') "
    "instead of python -m merjax.main.")
_SUMMARY = flags.DEFINE_bool("summary", False, "Print the last scores of every point, and write "
                             "scale.csv and scale.png.")


@dataclasses.dataclass(frozen=True)
class Point:
    name: str  # its grid values, "size=M,mesh.fsdp=2": the name of its workdir
    workdir: str
    config: str  # its --config: the file, the variants given and the grid's
    overrides: dict  # config key -> value, passed as --config.<key>=<value>
    argv: list  # the training command

    @property
    def variants(self):
        return dict(_variant_items(self.config.partition(":")[2]))


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


def point_name(values):
    """{'size': 'M', 'data.manual_dir': '/data/x'} -> 'size=M,data.manual_dir=%2Fdata%2Fx': one
    folder name (a path's slashes would nest folders)."""
    return ",".join(f"{k}={v.replace('/', '%2F')}" for k, v in values.items()) or "base"


def plan(config, workdir, grid, mode="train", launcher=""):
    """[Point] for every grid point of `config` (`path[:variants]`, as --config takes it), run
    by `python -m merjax.main`, or with `launcher` (a command line) by `<launcher> CONFIG
    WORKDIR [--config.key=value ...]`, the arguments launch/slurm.sbatch and launch/tpu_vm.sh
    take.

    Raises ValueError naming the grid key (or point) at fault: a key that is neither a config
    key nor a variant of the file, a variant given twice, a value the config refuses."""
    path, _, given = config.partition(":")
    given_items = [item for item in given.split(",") if item]
    grid_points = parse_grid(grid)
    variant_keys = {key for key in grid_points[0]
                    if _is_variant(path, given_items, key, grid_points[0][key])}
    twice = sorted(variant_keys & {name for name, _ in _variant_items(given)})
    if twice:
        raise ValueError(f"--grid key {twice[0]}: variant {twice[0]} is also given in "
                         f"--config={config}; name it once")
    points = []
    for values in grid_points:
        variants = given_items + [f"{k}={v}" for k, v in values.items() if k in variant_keys]
        spec = f"{path}:{','.join(variants)}" if variants else path
        overrides = {k: v for k, v in values.items() if k not in variant_keys}
        point_dir = os.path.join(workdir, point_name(values))
        head = (shlex.split(launcher) + [spec, point_dir] if launcher else
                [sys.executable, "-m", "merjax.main", f"--config={spec}", f"--workdir={point_dir}"])
        argv = (head + [f"--config.{k}={v}" for k, v in overrides.items()]
                + ([f"--mode={mode}"] if mode != "train" else []))
        points.append(Point(point_name(values), point_dir, spec, overrides, argv))
    return points


def _variant_items(arg):
    """'runlocal,size=M' -> [('runlocal', ''), ('size', 'M')]."""
    return [item.partition("=")[::2] for item in arg.split(",") if item]


@functools.cache
def _get_config(path):
    """The get_config function of a config file (loaded once)."""
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config


def _is_variant(path, given_items, key, value):
    """Whether grid key `key` is a variant of the config file rather than a config key."""
    if "." in key:
        return False
    get_config = _get_config(path)
    base = get_config(",".join(given_items)) if given_items else get_config()
    if cli.unknown_key(base, key) is None:
        return False
    try:
        get_config(",".join(given_items + [f"{key}={value}"]))
    except ValueError as e:
        if str(e).startswith(f"Unknown config variant {key!r}"):
            raise ValueError(f"--grid key {key}: neither a key of the config nor a variant of "
                             f"{path} ({e})") from e
        raise ValueError(f"--grid key {key}={value}: {e}") from e
    return True


def point_config(point):
    """The point's config exactly as its training command will parse it (same flag parser:
    variants, then typed --config.<key> overrides). Raises ValueError naming the point."""
    get_config = _get_config(point.config.partition(":")[0])
    variants = point.config.partition(":")[2]
    try:
        plain = get_config(variants) if variants else get_config()
    except ValueError as e:
        raise ValueError(f"point {point.name}: {e}") from e
    for key in point.overrides:
        problem = cli.unknown_key(plain, key)
        if problem:
            raise ValueError(f"--grid key {key}: {problem}")
    argv = ["sweep", f"--config={point.config}",
            *(f"--config.{k}={v}" for k, v in point.overrides.items())]
    parser = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=parser, lock_config=True,
                                    sys_argv=argv)
    try:
        parser(argv)
    except flags.Error as e:
        raise ValueError(f"point {point.name}: {str(e).strip().splitlines()[0]}") from e
    return parser.config


def last_scores(point_dir):
    """The last value of every metric in a run's metrics.jsonl ({} if it has none yet)."""
    scores = {}
    for line in scale.read_metrics(point_dir):
        scores.update({k: v for k, v in line.items() if k != "fold"})
    return scores


@dataclasses.dataclass
class PointRun:
    returncode: int
    stderr: str  # the lines naming an allocation failure, then the last lines


def run_point(cmd, keep_lines=40):
    """Runs one point to its end, streaming its stderr through to ours while keeping what
    classifies its failure (scale.status_of). A Ctrl-C reaches the point too (same process
    group) and it stops at a checkpoint of its current step, so the sweep waits for that
    rather than killing it as subprocess.run would."""
    oom_lines, last = [], collections.deque(maxlen=keep_lines)

    def tee(stream):
        for line in stream:
            sys.stderr.write(line)
            sys.stderr.flush()
            last.append(line)
            if len(oom_lines) < 5 and scale.is_oom(line):
                oom_lines.append(line)

    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace") as process:
        reader = threading.Thread(target=tee, args=(process.stderr,), daemon=True)
        reader.start()
        while True:
            try:
                returncode = process.wait()
                break
            except KeyboardInterrupt:
                pass
        reader.join()
    return PointRun(returncode, "".join(oom_lines + list(last)))


def error_line(stderr):
    """The line that best says why a point failed: an allocation failure, else the command's
    own one-line error, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    oom = [line for line in lines if scale.is_oom(line)]
    errors = [line for line in lines if ": error: " in line]
    if oom:
        return oom[0][:300]
    return (errors or lines or [""])[-1][:300]


def write_scale(points, configs, workdir, title):
    """scale.csv and scale.png of every point (launch/scale.py); returns the paths written."""
    rows = [scale.row(p.workdir, p.name, int(c.batch_size), int(c.total_steps),
                      tasks.load(c.task).SELECT,
                      size=p.variants.get("size") or c.model.get("size", ""))
            for p, c in zip(points, configs)]
    os.makedirs(workdir, exist_ok=True)
    written = [scale.write_csv(rows, os.path.join(workdir, "scale.csv"))]
    png = scale.plot(rows, os.path.join(workdir, "scale.png"), title=title)
    return written + ([png] if png else [])


def main(argv):
    del argv
    fixed = sorted(name for name in flags.FLAGS if name.startswith("config."))
    if fixed:
        raise app.UsageError(f"--{fixed[0]}: the points' commands would not carry it; make it "
                             f"a one-valued grid axis instead (--grid='{fixed[0][7:]}=...;...')")
    workdir = train_command.WORKDIR.value
    try:
        points = plan(flags.FLAGS["config"].config_filename, workdir, _GRID.value,
                      train_command.MODE.value, _LAUNCHER.value)
        configs = [point_config(p) for p in points]
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if not (_SUMMARY.value or _RUN.value):
        for p in points:
            print(shlex.join(p.argv))
        return
    title = f"--config={flags.FLAGS['config'].config_filename} --grid={_GRID.value!r}"
    failed, oom = [], []
    for point in points:
        if _SUMMARY.value:
            scores = last_scores(point.workdir)
            shown = {k: round(v, 4) for k, v in scores.items() if k.startswith(("val/", "cv/"))}
            print(f"{point.name}\tstep={scores.get('step')}\t{shown}")
            continue
        print("running:", shlex.join(point.argv), flush=True)
        status_path = os.path.join(point.workdir, scale.STATUS_FILE)
        if os.path.exists(status_path):  # its last run's; this run decides anew
            os.remove(status_path)
        result = run_point(point.argv)
        if result.returncode < 0 or result.returncode >= 128:  # stopped by a signal: stop too
            write_scale(points, configs, workdir, title)
            cli.exit_with(f"stopped during {point.workdir}; rerun the same command to resume",
                          result.returncode if result.returncode > 0 else 128 - result.returncode)
        status = scale.status_of(result.returncode, result.stderr)
        scale.write_status(point.workdir, status, result.returncode,
                           "" if status == "ok" else error_line(result.stderr))
        {"failed": failed, "oom": oom}.get(status, []).append(point.name)
    paths = write_scale(points, configs, workdir, title)
    print(f"scale table: {', '.join(paths)}", flush=True)
    if oom:
        print(f"out of memory: {', '.join(oom)}", file=sys.stderr, flush=True)
    if failed:  # each point's own error line is above; the others ran regardless
        cli.exit_with(f"error: {len(failed)} of {len(points)} points failed ({', '.join(failed)})"
                      f"; rerun the same command to retry them", 1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
