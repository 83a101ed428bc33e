"""launch/against_pytorch.py: rounds of a PyTorch harness against merjax.bench, each round
comparing the harness record of merjax's own model (here a stand-in harness that reports two
models, as ../shared/peer_bench's `bench_fusion.py --quick` does)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from launch import against_pytorch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(name, params, dims, steps_per_s, batch=32):
    return {"name": name, "params": params, "batch_size": batch,
            "input_shapes": [[batch, d] for d in dims],
            "train": {"median_steps_per_s": steps_per_s, "min_steps_per_s": steps_per_s - 1,
                      "max_steps_per_s": steps_per_s + 1, "contended": False,
                      "foreign_load": [0.0, 0.01]}}


# What `bench_fusion.py --only attention --quick` reports: the smaller dims' model first.
BASE = record("attention_utt_base_h128", 445_065, (768, 768, 512), 200.0)
LARGE = record("attention_utt_large_h128", 543_369, (1024, 1024, 768), 125.0)
MERJAX = {"params": 543_369, "global_batch": 32,
          "input_shapes": {"label": [], "row": [], "audio": [1, 1024], "audio_mask": [1],
                           "text": [1, 1024], "text_mask": [1], "video": [1, 768],
                           "video_mask": [1]}}


def test_the_record_compared_is_the_one_of_merjaxs_model():
    assert against_pytorch.feature_dims(MERJAX["input_shapes"]) == [768, 1024, 1024]
    assert against_pytorch.matching_record([BASE, LARGE], MERJAX) is LARGE
    # Another batch size is another measurement.
    with pytest.raises(ValueError, match="reported 0 records"):
        against_pytorch.matching_record([BASE, record("b64", 543_369, (1024, 1024, 768), 90.0,
                                                      batch=64)], MERJAX)
    # Only the other model: the error lists what the harness reported.
    with pytest.raises(ValueError) as error:
        against_pytorch.matching_record([BASE], MERJAX)
    message = str(error.value)
    assert "543,369 parameters, batch 32, feature dims [768, 1024, 1024]" in message
    assert "attention_utt_base_h128: 445,065 parameters, batch 32, dims [512, 768, 768]" in message
    with pytest.raises(ValueError, match="reported 2 records"):
        against_pytorch.matching_record([LARGE, LARGE], MERJAX)


def test_rounds_alternate_and_each_compares_merjaxs_model(tmp_path):
    harness = tmp_path / "harness"
    harness.mkdir()
    # A stand-in harness: appends both models' records to PEERBENCH_RESULTS, which must be a
    # fresh file each round (it asserts so), and counts its runs.
    (harness / "bench_fusion.py").write_text(textwrap.dedent(f"""
        import json, os
        path = os.environ["PEERBENCH_RESULTS"]
        assert not os.path.exists(path), "results from an earlier run"
        with open(path, "a") as f:
            for rec in {[BASE, LARGE]!r}:
                f.write(json.dumps(rec) + "\\n")
        with open("runs.txt", "a") as f:
            f.write("run\\n")
        print("attention_utt_large_h128 ... train 125.00 steps/s")
        """))
    out = tmp_path / "rounds.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.against_pytorch", f"--peer_dir={harness}",
         f"--peer_python={sys.executable}", "--rounds=2", f"--out={out}",
         "--bench_args=--synthetic --steps=3 --repeats=1 --pipeline_batches=2 --quiet_wait_s=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert [r["order"] for r in rounds] == [["pytorch", "merjax"], ["merjax", "pytorch"]]
    assert (harness / "runs.txt").read_text().count("run") == 2
    for r in rounds:
        assert r["pytorch"]["name"] == "attention_utt_large_h128"
        assert r["pytorch"]["params"] == r["merjax"]["params"] == 543_369
        assert r["pytorch"]["steps_per_s"] == 125.0
        assert r["merjax"]["config"] == "configs/cross.py:bench,mertools"
        assert r["ratio"] == round(r["merjax"]["steps_per_s"] / 125.0, 3) > 0
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("round 1: PyTorch attention_utt_large_h128 125.0 steps/s")
    reached = sum(r["ratio"] >= 3.0 for r in rounds)
    assert lines[-1].startswith(f"{reached} of 2 rounds at or above 3.0x")


def test_a_folder_without_the_harness_is_refused_in_one_line_before_anything_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.against_pytorch", f"--peer_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == (
        f"launch.against_pytorch: error: --peer_dir={tmp_path} has no 'bench_fusion.py' (the "
        f"first word of --peer_args): point it at ../shared/peer_bench")


def test_a_failing_harness_stops_the_comparison_with_its_stderr(tmp_path):
    (tmp_path / "bench_fusion.py").write_text("import sys\nsys.exit('no torch here')\n")
    with pytest.raises(ValueError, match="(?s)exited with 1.*no torch here"):
        against_pytorch.run_peer(str(tmp_path), sys.executable, "bench_fusion.py --quick")
