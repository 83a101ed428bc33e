"""A sweep's scaling table and plot, from what each point wrote (launch/sweep.py writes them after
--run and with --summary):

  scale.csv  one row per point: COLUMNS
  scale.png  parameters against step time, MFU and peak memory per device, one line per mesh

A point's numbers come from its own metrics.jsonl, so a sweep run on a cluster can be summarised
anywhere its workdirs are copied: `cost/*` (written once at the first compile, merjax/costs.py:
parameters, FLOPs per step, peak memory, the mesh), `perf/steps_per_s` (each log flush) and the
kept state's score (`selected/val/<metric>`, written by the loop when a run ends; `cv/<metric>`
for cross-validated runs). Its status is
the failure the sweep recorded when it ran it (STATUS_FILE: "oom" or "failed"), else "ok" if its
metrics reach its last step and "not run" if not.
"""
import csv
import json
import os
import re

COLUMNS = ("point", "status", "size", "params", "mesh", "batch", "flops_per_step", "step_time_s",
           "samples_per_s", "mfu", "peak_memory_bytes_per_device", "score_name", "score", "note")
STATUS_FILE = "sweep_status.json"
# XLA's allocation failures (RESOURCE_EXHAUSTED / "Out of memory while trying to allocate" on
# GPU and TPU, "OOM when allocating"), and the host's (MemoryError).
_OOM = re.compile(r"RESOURCE_EXHAUSTED|out of memory|\bOOM\b|\bMemoryError\b", re.IGNORECASE)


def is_oom(text):
    """Whether a failed point's stderr says it ran out of memory."""
    return bool(_OOM.search(text))


def status_of(returncode, stderr_text):
    """"ok", "oom" (a failure whose stderr names an allocation failure) or "failed"."""
    if returncode == 0:
        return "ok"
    return "oom" if is_oom(stderr_text) else "failed"


def write_status(point_dir, status, returncode, note=""):
    """Records how the sweep's run of a point ended (read back by `row`)."""
    os.makedirs(point_dir, exist_ok=True)
    with open(os.path.join(point_dir, STATUS_FILE), "w") as f:
        json.dump(dict(status=status, returncode=returncode, note=note), f)


def read_metrics(point_dir):
    """The rows of a point's metrics.jsonl ([] if it has none)."""
    path = os.path.join(point_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def step_time(rows):
    """Seconds per train step: the mean of 1 / perf/steps_per_s over the log flushes, leaving
    out each fold's first flush (its first steps run while caches and prefetch warm up) where
    that fold has more; None without a flush."""
    by_fold = {}
    for r in rows:
        if "perf/steps_per_s" in r:
            by_fold.setdefault(r.get("fold"), []).append(r["perf/steps_per_s"])
    times = [1 / rate for rates in by_fold.values() for rate in (rates[1:] or rates)
             if rate > 0]
    return sum(times) / len(times) if times else None


def final_score(rows, select):
    """(name, value) of the score the run reports for the state it kept: the cross-validated
    mean `cv/<metric>` where there is one, else the kept state's validation score as the loop
    wrote it when the run ended (`selected/val/<metric>`, merjax/train.py: the best state where
    the task selects one, else the last); <metric> is the task's SELECT metric, or without one
    the first written. (None, None) before the run ends."""
    from merjax.train import SELECTED_PREFIX  # here: the sweep's --help imports no jax
    summaries = [r for r in rows if "fold" not in r]
    for prefix, shown in (("cv/", "cv/"), (SELECTED_PREFIX + "val/", "val/")):
        written = [r for r in summaries if any(k.startswith(prefix) for k in r)]
        if written:
            metrics = sorted(k[len(prefix):] for k in written[-1] if k.startswith(prefix))
            metric = select[0] if select and select[0] in metrics else metrics[0]
            return shown + metric, written[-1][prefix + metric]
    return None, None


def row(point_dir, name, batch, total_steps, select, size=""):
    """The COLUMNS of one point (unknown values left empty)."""
    from merjax import costs  # here: the sweep's --help and flag errors import no jax
    rows = read_metrics(point_dir)
    cost = {}
    for r in rows:
        cost.update({k[len("cost/"):]: v for k, v in r.items() if k.startswith("cost/")})
    status, note = _status(point_dir, rows, total_steps)
    seconds = step_time(rows)
    score_name, score = final_score(rows, select)
    mesh = "x".join(str(int(v)) for k, v in cost.items() if k.startswith("mesh_"))
    return dict(
        point=name, status=status, size=size,
        params=_int(cost.get("params")), mesh=mesh, batch=batch,
        flops_per_step=cost.get("flops_per_step"), step_time_s=seconds,
        samples_per_s=batch / seconds if seconds else None,
        mfu=costs.mfu(cost.get("flops_per_step"), 1 / seconds if seconds else None,
                      cost.get("peak_flops_per_s")),
        peak_memory_bytes_per_device=_int(cost.get("peak_memory_bytes_per_device")),
        score_name=score_name, score=score, note=note)


def _status(point_dir, rows, total_steps):
    """A failure the sweep recorded, else what the metrics show: a launcher that only submits
    a job (sbatch) exits 0 long before its point finishes."""
    path = os.path.join(point_dir, STATUS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        if recorded["status"] != "ok":
            return recorded["status"], recorded.get("note", "")
    last = max((r["step"] for r in rows if "perf/steps_per_s" in r), default=None)
    if last is not None and last >= total_steps:
        return "ok", ""
    return "not run", "" if last is None else f"stopped at step {last} of {total_steps}"


def _int(value):
    return None if value is None else int(value)


def write_csv(rows, path):
    """scale.csv: COLUMNS, one row per point; unknown values are empty cells."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if r.get(k) is None else r[k] for k in COLUMNS} for r in rows)
    return path


def read_csv(path):
    """scale.csv's rows as dicts of strings (empty cells as "")."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot(rows, path, title=""):
    """scale.png: parameters against step time, MFU and peak memory per device, one
    line per mesh (data x fsdp x model) through its finished points; the points that ran out of
    memory, where their compile got as far as a parameter count and memory, as red crosses on
    the memory panel. Returns `path`, or None when no point has finished."""
    done = [r for r in rows if r["status"] == "ok" and r["params"] and r["step_time_s"]]
    if not done:
        return None
    import matplotlib  # here: only a sweep that plots needs it
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    # (column, axis label, scale, y scale): time and memory span decades across sizes.
    panels = (("step_time_s", "step time (s)", 1, "log"), ("mfu", "MFU (%)", 100, "linear"),
              ("peak_memory_bytes_per_device", "peak memory per device (MB)", 1e-6, "log"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for mesh in sorted({r["mesh"] for r in done}):
        line = sorted((r for r in done if r["mesh"] == mesh), key=lambda r: r["params"])
        for ax, (key, _, scale, _) in zip(axes, panels):
            kept = [r for r in line if r[key] is not None]
            ax.plot([r["params"] for r in kept], [r[key] * scale for r in kept], marker="o",
                    label=f"mesh {mesh}")
            for r in kept:
                if r["size"]:
                    ax.annotate(r["size"], (r["params"], r[key] * scale),
                                textcoords="offset points", xytext=(4, 4), fontsize=8)
    oom = [r for r in rows if r["status"] == "oom" and r["params"]
           and r["peak_memory_bytes_per_device"]]
    if oom:
        axes[2].scatter([r["params"] for r in oom],
                        [r["peak_memory_bytes_per_device"] * 1e-6 for r in oom], marker="x",
                        color="red", label="out of memory")
    for ax, (_, label, _, yscale) in zip(axes, panels):
        ax.set_xscale("log")
        ax.set_yscale(yscale)
        ax.set_xlabel("parameters")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(title="data x fsdp x model", fontsize=8)
    if oom:
        axes[2].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

