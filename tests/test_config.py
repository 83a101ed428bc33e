"""Config handling: variants, unknown keys, the plainly named run keys of every track."""
import os
import subprocess
import sys

import pytest

from configs import common
from configs import cross as cross_config
from configs import fg as fg_config
from configs import prefer as prefer_config
from configs import ps as ps_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_KEYS = ("seed", "total_steps", "log_every", "eval_every", "checkpoint_every")
# What `:real` resizes; everything else (data settings, model, optimiser) stays as it is.
REAL_KEYS = {"total_steps", "log_every", "eval_every", "checkpoint_every", "optim.warmup_steps",
             "data.num_shards"}


def flat(config):
    def walk(tree, prefix):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    return dict(walk(config.to_dict(), ""))


def changed(a, b):
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    return {k for k in a if a[k] != b[k]}


def test_ps_config_has_the_run_keys_and_a_small_runlocal_variant():
    full, local = ps_config.get_config(), ps_config.get_config("runlocal")
    for c in (full, local):
        for key in RUN_KEYS:
            assert key in c
        assert c.data.manual_dir == "" and set(c.mesh) >= {"data", "fsdp", "model"}
    assert local.total_steps < full.total_steps and local.model.width < full.model.width
    assert full.data.train_subjects == tuple(range(1, 21))
    assert full.data.validation_subjects == (21, 22, 23, 24)


def test_ps_real_variant_trains_tens_of_epochs_of_the_real_release():
    demo, real = ps_config.get_config(), ps_config.get_config("real")
    assert changed(demo, real) == REAL_KEYS
    train_examples = 20 * 36_864 // 24  # 20 train subjects of 24, 36,864 label seconds in all
    epochs = real.total_steps * real.batch_size / train_examples
    assert 20 <= epochs <= 40
    assert demo.total_steps * demo.batch_size / train_examples < 2  # why the variant exists
    assert real.optim.warmup_steps < real.eval_every <= real.total_steps // 10
    assert real.total_steps % real.checkpoint_every == 0  # the last checkpoint is a periodic one


def test_cross_real_variant_follows_the_mertools_schedule():
    demo, real = cross_config.get_config(), cross_config.get_config("real")
    assert changed(demo, real) == REAL_KEYS | {"eval_batch_size"}
    fold_train = 9_395 * (real.cv.folds - 1) // real.cv.folds  # track1_train minus one fold
    steps_per_epoch = fold_train / real.batch_size
    assert real.batch_size == 32 and real.optim.lr == 1e-3 and real.optim.weight_decay == 1e-5
    assert real.total_steps / steps_per_epoch == pytest.approx(100, rel=0.01)
    assert real.eval_every / steps_per_epoch == pytest.approx(1, rel=0.01)  # best epoch is kept


def test_variants_combine_and_contradictions_are_errors():
    raw = cross_config.get_config("real,input_kind=raw")
    assert raw.data.input_kind == "raw"
    assert changed(cross_config.get_config("input_kind=raw"), raw) == changed(
        cross_config.get_config(), cross_config.get_config("real"))
    for module in (ps_config, cross_config):
        with pytest.raises(ValueError, match="'runlocal' and 'real' contradict"):
            module.get_config("runlocal,real")


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="Unknown config variant 'runlcal'"):
        ps_config.get_config("runlcal")
    with pytest.raises(ValueError, match=r"Unknown config variant 'rael'.*'real'"):
        cross_config.get_config("rael,input_kind=raw")
    with pytest.raises(ValueError, match="needs a value"):
        cross_config.get_config("input_kind")
    assert common.parse_arg("n=3", n=1).n == 3


@pytest.mark.parametrize("module", [ps_config, cross_config, fg_config, prefer_config])
def test_size_variant_sets_the_model_dims_and_nothing_else(module):
    """`:size=` changes the transformer's dims (after runlocal) and records the size; S is the
    config as it is. Parameter counts per size: tests/test_switches.py."""
    for base in ("", "runlocal,"):
        plain, sized = module.get_config(base.rstrip(",")), module.get_config(f"{base}size=L")
        assert plain.model.size == "S" and sized.model.size == "L"
        assert module.get_config(f"{base}size=S").to_dict() == plain.to_dict()
        dims = {f"model.{k}" for k in common.SIZES["L"]} | {"model.size"}
        if "text" in plain.model:  # MER-Prefer's description encoder grows with it
            dims |= {f"model.text.{k}" for k in common.SIZES["L"]}
            assert sized.model.text.depth == common.SIZES["L"]["depth"] // 2
        assert changed(plain, sized) == dims
        assert plain.model.dtype == "float32" and not plain.model.remat
        assert not plain.model.scan_layers and plain.optim.accum_steps == 1


def test_unknown_config_key_on_the_command_line_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "merjax.main", "--config=configs/ps.py:runlocal",
         f"--workdir={tmp_path / 'run'}", "--config.data.manul_dir=/x"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "merjax.main: error: --config.data.manul_dir: the config has no key data.manul_dir; "
        "did you mean data.manual_dir?"]
    assert not (tmp_path / "run").exists()


def test_raw_clip_configs_split_a_cpu_backend_in_two():
    # sharding.split_host_cpu: the raw steps ran 1.1-1.4x faster on 2 CPU devices; the
    # millisecond feature steps and MER-PS's (0.9x on 2) keep JAX's one.
    for module in (cross_config, fg_config, prefer_config):
        assert module.get_config("input_kind=raw").mesh.cpu_devices == 2, module.__name__
        assert module.get_config().mesh.cpu_devices == -1, module.__name__
    assert ps_config.get_config().mesh.cpu_devices == -1
