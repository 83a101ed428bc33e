"""merjax's train steps/s over a PyTorch harness's, for the same model, in alternated rounds.

  python -m launch.against_pytorch --peer_dir=../shared/peer_bench \\
      --peer_python=/tmp/peer-venv/bin/python --rounds=5 --out=runs/against_pytorch.jsonl

Each round runs the PyTorch harness (`--peer_args`, in `--peer_dir`, with the interpreter that
has torch) and `python -m merjax.bench --config=<--bench_config> <--bench_args>`, one after
the other, the order swapped every round so neither always runs in the other's wake. Machines
are shared and windows differ by tens of percent, so only numbers from the same round are
compared.

A harness run reports several models (`bench_fusion.py --quick`: MERTools' attention model at
two sets of feature dims). The round compares the one record with merjax's parameter count,
batch size and input feature dims, and stops with an error that lists what the harness reported
when there is no such record or more than one: a ratio against another model's rate (the
smaller dims' model runs ~1.3x faster in PyTorch) says nothing. Each harness run writes to a
fresh results file (PEERBENCH_RESULTS), so no earlier run's records can be picked up.

Both sides count a timed window only when other processes used under 5% of the cores meanwhile
(merjax/contention.py; the harness's common.py), and say when too few were clean
(`contended`). Printed per round: both rates, their windows' range, the ratio; at the end, the
rounds at or above `--target`. `--out` gets one JSON line a round, with both sides' records.
"""
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

from absl import flags

from merjax import cli

_PEER_DIR = flags.DEFINE_string("peer_dir", None, "The PyTorch harness's folder "
                                "(../shared/peer_bench).", required=True)
_PEER_PYTHON = flags.DEFINE_string("peer_python", "python3", "A python with torch installed.")
_PEER_ARGS = flags.DEFINE_string("peer_args", "bench_fusion.py --only attention --quick",
                                 "The harness's command line after the interpreter.")
_BENCH_CONFIG = flags.DEFINE_string("bench_config", "configs/cross.py:bench,mertools",
                                    "merjax.bench's --config: the same model as a harness "
                                    "record.")
_BENCH_ARGS = flags.DEFINE_string("bench_args", "--synthetic --steps=300",
                                  "merjax.bench's other flags.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternated rounds.")
_TARGET = flags.DEFINE_float("target", 3.0, "The ratio each round is checked against.")
_OUT = flags.DEFINE_string("out", None, "A JSONL file that gets one line a round (appended).")


def feature_dims(merjax_shapes):
    """Sorted input feature dims of merjax.bench's `input_shapes` ({name: per-example shape};
    masks, labels and row ids are not inputs)."""
    return sorted(shape[-1] for name, shape in merjax_shapes.items()
                  if shape and not name.endswith("_mask") and name not in ("label", "row"))


def matching_record(records, merjax):
    """The harness record of merjax.bench's model (`merjax`: its JSON): equal parameter count,
    batch size and input feature dims (the harness's input_shapes are [batch, dim])."""
    want = (merjax["params"], merjax["global_batch"], feature_dims(merjax["input_shapes"]))
    found = [r for r in records
             if (r["params"], r["batch_size"], sorted(s[-1] for s in r["input_shapes"])) == want]
    if len(found) == 1:
        return found[0]
    listed = "; ".join(f"{r['name']}: {r['params']:,} parameters, batch {r['batch_size']}, "
                       f"dims {sorted(s[-1] for s in r['input_shapes'])}" for r in records)
    raise ValueError(
        f"The PyTorch harness reported {len(found)} records of merjax's model ({want[0]:,} "
        f"parameters, batch {want[1]}, feature dims {want[2]}) where one was expected; it "
        f"reported: {listed or 'nothing'}. Compare the same model: change --bench_config or "
        f"--peer_args.")


def _run(command, cwd=None, env=None):
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise ValueError(f"{shlex.join(command)} (in {cwd or os.getcwd()}) exited with "
                         f"{done.returncode}; its stderr ends:\n{done.stderr[-3000:]}")
    return done.stdout


def run_peer(peer_dir, python, args):
    """The records one harness run writes (a fresh results file each time)."""
    with tempfile.TemporaryDirectory() as tmp:
        results = os.path.join(tmp, "results.jsonl")
        _run([python, *shlex.split(args)], cwd=peer_dir,
             env={**os.environ, "PEERBENCH_RESULTS": results})
        if not os.path.exists(results):
            raise ValueError(f"The PyTorch harness ({args}, in {peer_dir}) wrote no results "
                             f"to PEERBENCH_RESULTS")
        with open(results) as f:
            return [json.loads(line) for line in f if line.strip()]


def run_merjax(config, args):
    """merjax.bench's JSON (its stdout is that one line)."""
    out = _run([sys.executable, "-m", "merjax.bench", f"--config={config}", *shlex.split(args)])
    return json.loads(out.strip().splitlines()[-1])


def one_round(index):
    """Runs both sides (order by round) and returns the round's record."""
    peer_first = index % 2 == 0
    order = ("pytorch", "merjax") if peer_first else ("merjax", "pytorch")
    results = {}
    for side in order:
        results[side] = (run_peer(_PEER_DIR.value, _PEER_PYTHON.value, _PEER_ARGS.value)
                         if side == "pytorch"
                         else run_merjax(_BENCH_CONFIG.value, _BENCH_ARGS.value))
    merjax = results["merjax"]
    peer = matching_record(results["pytorch"], merjax)
    ratio = merjax["train_steps_per_s"] / peer["train"]["median_steps_per_s"]
    return {
        "round": index + 1, "order": list(order), "ratio": round(ratio, 3),
        "pytorch": {"name": peer["name"], "params": peer["params"],
                    "steps_per_s": round(peer["train"]["median_steps_per_s"], 2),
                    "range": [round(peer["train"]["min_steps_per_s"], 2),
                              round(peer["train"]["max_steps_per_s"], 2)],
                    "contended": peer["train"]["contended"],
                    "foreign_cpu": peer["train"]["foreign_load"]},
        "merjax": {"config": _BENCH_CONFIG.value, "params": merjax["params"],
                   "steps_per_s": merjax["train_steps_per_s"],
                   "range": merjax["train_steps_per_s_range"],
                   "contended": merjax["train_contended"],
                   "foreign_cpu": merjax["train_foreign_cpu"]},
    }


def _flag(side):
    return " (contended)" if side["contended"] else ""


def main(argv):
    del argv  # cli.run refuses stray arguments
    script = os.path.join(_PEER_DIR.value, (shlex.split(_PEER_ARGS.value) or [""])[0])
    if not os.path.isfile(script):
        raise ValueError(f"--peer_dir={_PEER_DIR.value} has no {os.path.basename(script)!r} "
                         f"(the first word of --peer_args): point it at ../shared/peer_bench")
    if _ROUNDS.value < 1:
        raise ValueError(f"--rounds must be at least 1; found {_ROUNDS.value}")
    ratios = []
    for index in range(_ROUNDS.value):
        record = one_round(index)
        ratios.append(record["ratio"])
        p, m = record["pytorch"], record["merjax"]
        print(f"round {record['round']}: PyTorch {p['name']} {p['steps_per_s']} steps/s "
              f"{p['range']}{_flag(p)} | merjax {m['steps_per_s']} steps/s {m['range']}"
              f"{_flag(m)} | {record['ratio']:.2f}x", flush=True)
        if _OUT.value:
            os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
            with open(_OUT.value, "a") as f:
                f.write(json.dumps(record) + "\n")
    reached = sum(r >= _TARGET.value for r in ratios)
    print(f"{reached} of {len(ratios)} rounds at or above {_TARGET.value}x; ratios "
          f"{min(ratios):.2f}-{max(ratios):.2f}, median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    cli.run(main)
