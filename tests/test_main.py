"""The command line: one line per user error, --help exits 0, a readable log, the headline."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from configs import cross as cross_config
from configs import ps as ps_config
from merjax import cli, main, train
from tfds_builders.common import ReleaseError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(*args, tmp_path, timeout=120):
    """Runs `python <args>` from the repository root with its own TFDS data dir."""
    env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_error_line(proc, status):
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith(("merjax.main: error: ", "launch.")), last
    return last


@pytest.mark.parametrize("module,shows", [
    ("merjax.main", ("--config", "--workdir", "--mode")),
    ("launch.sweep", ("--config", "--workdir", "--mode", "--grid", "--[no]run")),
    ("launch.build", ("--config",)),
    ("launch.against_pytorch", ("--peer_dir", "--peer_python", "--bench_config", "--rounds")),
])
def test_help_exits_zero_and_lists_the_flags(module, shows, tmp_path):
    proc = command("-m", module, "--help", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for flag in shows:
        assert f"{flag}:" in proc.stdout
    assert proc.stderr == ""


def test_the_commands_import_no_jax_or_tfds_before_parsing(tmp_path):
    """What keeps --help and command-line mistakes fast."""
    proc = command("-c", "import sys, merjax.main, launch.build, launch.sweep; "
                   "print(sorted({'jax', 'tensorflow_datasets', 'orbax'} & set(sys.modules)))",
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("args,line", [
    (["--config=configs/ps.py:nosuch"],
     "--config=configs/ps.py:nosuch: Unknown config variant 'nosuch' in 'nosuch'; "
     "known: ['real', 'runlocal', 'size'] (see --help)"),
    (["--config=configs/cross.py:real,runlocal"],
     "--config=configs/cross.py:real,runlocal: Config variants 'runlocal' and 'real' contradict "
     "each other; pick one (see --help)"),
    (["--config=configs/nosuch.py"],
     f"--config=configs/nosuch.py: no such file 'configs/nosuch.py' (relative paths start at "
     f"{ROOT})"),
    (["--config=configs/ps.py", "--config.totl_steps=3"],
     "--config.totl_steps: the config has no key totl_steps; did you mean total_steps?"),
    (["--config=configs/cross.py", "--config.dta.manual_dir=/x"],
     "--config.dta.manual_dir: the config has no key dta; did you mean data?"),
    (["--config=configs/ps.py", "--config.total_steps=many"],
     "flag --config.total_steps=many: invalid literal for int() with base 10: 'many' "
     "(see --help)"),
    (["--config=configs/ps.py", "--mode=fit"],
     "flag --mode=fit: value should be one of <train|evaluate|predict|export> (see --help)"),
    (["--config=configs/ps.py", "stray"],
     "unexpected arguments 'stray'; flags look like --name=value (see --help)"),
])
def test_command_line_mistakes_end_in_one_line(args, line, tmp_path):
    proc = command("-m", "merjax.main", f"--workdir={tmp_path / 'run'}", *args,
                   tmp_path=tmp_path)
    assert one_error_line(proc, 2) == f"merjax.main: error: {line}"
    assert proc.stdout == ""
    assert not (tmp_path / "run").exists() and not (tmp_path / "tfds").exists()


def test_a_wrong_manual_dir_is_one_line_and_leaves_no_prepared_folder(tmp_path):
    empty = tmp_path / "release"
    empty.mkdir()
    proc = command("-m", "merjax.main", "--config=configs/ps.py:runlocal",
                   f"--workdir={tmp_path / 'run'}", f"--config.data.manual_dir={empty}",
                   tmp_path=tmp_path)
    line = one_error_line(proc, 1)
    assert line.startswith("merjax.main: error: MER-PS manual_dir unusable: ")
    assert "--config.data.manual_dir=" in line  # how to fix it
    assert not (tmp_path / "run").exists()
    # Nothing half-made in the TFDS dir either: no dataset folder, no empty download folders.
    assert list((tmp_path / "tfds").rglob("*")) == []


def test_user_errors_are_what_the_project_raised_for_the_user():
    def catch(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 (the test sorts them)
            return e

    def raised_by_a_test():
        raise ValueError("not the project's own check")

    assert cli.is_user_error(ReleaseError("release.mat: missing"))
    assert cli.is_user_error(catch(lambda: open("/nonexistent/file")))
    assert cli.is_user_error(catch(lambda: ps_config.get_config("runlocal,real")))
    # Raised by a library, by Python itself (even inside project code) or outside the project:
    # a bug, which keeps its traceback.
    assert not cli.is_user_error(catch(lambda: np.zeros(3).reshape(2)))
    assert not cli.is_user_error(catch(lambda: main.headline("ps", "train", {"a": "x"}, "")))
    assert not cli.is_user_error(catch(lambda: {}["key"]))
    assert not cli.is_user_error(catch(raised_by_a_test))


def test_stopped_exits_128_plus_the_signal_with_its_line(tmp_path, monkeypatch, capsys):
    def stopped(config, workdir, mode):
        os.makedirs(os.path.join(workdir, "checkpoints", "7"))
        open(os.path.join(workdir, "checkpoints", "7", "state"), "w").close()
        raise train.Stopped(7, signal.SIGTERM)

    monkeypatch.setattr(train, "run", stopped)
    with pytest.raises(SystemExit) as exit_:
        main.execute(ps_config.get_config("runlocal"), str(tmp_path / "run"), "train")
    assert exit_.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "stopped at step 7; rerun the same command to resume")
    assert (tmp_path / "run" / "checkpoints" / "7").is_dir()  # what the rerun resumes from


def test_headline_is_the_last_line_on_stdout(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "run", lambda config, workdir, mode: {"cv/waf": 0.7912,
                                                                      "cv/acc": 0.78})
    main.execute(cross_config.get_config("runlocal"), str(tmp_path), "evaluate")
    assert capsys.readouterr().out.splitlines()[-1] == "cross evaluate: cv/waf=0.7912 cv/acc=0.78"
    assert main.headline("ps", "export", {}, "/w") == "ps export: done, see /w"


def test_a_failed_first_run_leaves_no_workdir_and_a_used_one_is_kept(tmp_path):
    config = ps_config.get_config("runlocal")
    config.data.tfds_dir = str(tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="--mode=evaluate needs a checkpoint; none in"):
        main.execute(config, str(tmp_path / "fresh"), "evaluate")
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    config.batch_size = 7  # refused by the loop's own check: a user error
    with pytest.raises(ValueError, match="batch_size=7 must divide") as error:
        main.execute(config, str(tmp_path / "used"), "train")
    assert cli.is_user_error(error.value)
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"


def test_config_is_logged_one_compact_line_per_leaf():
    lines = main.config_lines(ps_config.get_config())
    assert "data.train_subjects: (1, 2, ..., 20)" in lines
    assert "data.validation_subjects: (21, 22, 23, 24)" in lines
    assert "optim.lr: 0.002" in lines and "data.manual_dir: ''" in lines
    assert "sharding.rules: (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), " in lines[
        [l.startswith("sharding.rules") for l in lines].index(True)]
    assert len(lines) == len(set(l.split(":")[0] for l in lines))  # every key once
    assert not any("!!python" in l or "\n" in l for l in lines)
    assert main._compact((3, 1, 2, 4, 5)) == "(3, 1, 2, 4, 5)"  # only runs are shortened
    assert main._compact([5, 6, 7, 8, 9]) == "[5, 6, ..., 9]"


def test_unknown_key_names_the_nearest_known_one():
    config = ps_config.get_config()
    assert cli.unknown_key(config, "optim.lr") is None
    assert cli.unknown_key(config, "sharding.rules[0]") is None
    assert cli.unknown_key(config, "optim.lrr") == (
        "the config has no key optim.lrr; did you mean optim.lr?")
    assert cli.unknown_key(config, "zzz").startswith(
        "the config has no key zzz; known keys: batch_size, checkpoint_every, data,")
