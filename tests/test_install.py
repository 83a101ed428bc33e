"""Installable, and loadable as the README says (issue #10).

The wheel carries the four top-level packages and the data files the code reads, and no tests;
an export loads and runs in a process where flax, grain, optax, ml_collections and the TensorFlow
stack cannot be imported, and merjax.export imports nothing beyond jax, numpy and orbax.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import types
import zipfile

import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("merjax", "tfds_builders", "configs", "launch")


def test_wheel_holds_the_packages_and_their_data_and_no_tests(tmp_path):
    # Built from a copy: an in-tree build leaves build/ and merjax.egg-info/ in the checkout.
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGES + ("tests",):
        shutil.copytree(os.path.join(ROOT, name), source / name, ignore=ignore)
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    # No build isolation: builds offline with the setuptools and wheel already installed.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = glob.glob(str(tmp_path / "dist" / "merjax-0.1.0-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read("merjax-0.1.0.dist-info/METADATA").decode()
    for path in ("merjax/train.py", "merjax/tasks/ps.py", "tfds_builders/mer_ps/release.py",
                 "configs/ps.py", "launch/sweep.py",
                 "tfds_builders/mer2026/emotion_wheel/wheel1.xlsx",
                 "tfds_builders/mer2026/emotion_wheel/format.csv",
                 "tfds_builders/mer2026/emotion_wheel/synonym.xlsx",
                 "tfds_builders/mer_ps/README.md"):
        assert path in names, path
    assert not [n for n in names if n.startswith("tests/")]
    assert {n.split("/")[0] for n in names} == set(PACKAGES) | {"merjax-0.1.0.dist-info"}
    # The dependencies are requirements.txt's pins, one list.
    assert "Requires-Dist: jax==" in metadata and "Requires-Dist: orbax-checkpoint==" in metadata


_LOAD_WITHOUT_THE_TRAINING_STACK = """
import json, sys
# None in sys.modules: importing any of these raises ImportError.
for name in ("flax", "grain", "optax", "ml_collections", "tensorflow_datasets", "tensorflow"):
    sys.modules[name] = None
import jax, numpy as np, orbax.checkpoint  # what loading is allowed to need
before = {m.split(".")[0] for m in sys.modules}
from merjax import export
added = {m.split(".")[0] for m in sys.modules} - before - sys.stdlib_module_names
exported, params, signature = export.load(sys.argv[1])
inputs = {k: np.asarray(v) for k, v in json.loads(sys.argv[2]).items()}
inputs["mask"] = inputs["mask"].astype(bool)
print(json.dumps(dict(added=sorted(added), step=signature["step"],
                      outputs=np.asarray(exported.call(params, inputs)).tolist())))
"""


def _tiny_export(directory):
    """An export of a two-layer NNX model (an nnx.List: integer keys in the state) and its
    optimizer, through merjax.export.export as train.py calls it; returns (inputs, outputs)."""
    import optax
    from flax import nnx

    from merjax import export

    class Tiny(nnx.Module):

        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(12, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)])

        def __call__(self, inputs):
            x = inputs["x"].reshape(inputs["x"].shape[0], -1) * inputs["mask"][:, None]
            return self.layers[1](jnp.tanh(self.layers[0](x)))

    model = Tiny(nnx.Rngs(params=0))
    graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)))
    task = types.SimpleNamespace(predict=lambda m, inputs: m(inputs))
    example = dict(x=np.zeros((3, 4), np.float32), mask=np.bool_(True), label=np.float32(0))
    export.export(directory, task=task, graphdef=graphdef, state=state, example=example,
                  input_names=("x", "mask"), meta=dict(task="tiny", step=7))
    rng = np.random.default_rng(0)
    inputs = dict(x=rng.normal(size=(5, 3, 4)).astype(np.float32),
                  mask=np.array([True, True, False, True, True]))
    return inputs, np.asarray(task.predict(model, inputs))


def test_an_export_loads_and_runs_with_jax_numpy_and_orbax_only(tmp_path):
    directory = str(tmp_path / "export")
    inputs, want = _tiny_export(directory)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_THE_TRAINING_STACK, directory,
         json.dumps({k: v.tolist() for k, v in inputs.items()})],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # merjax.export (and merjax.checkpoint under it) bring in nothing beyond jax, numpy, orbax.
    assert got["added"] == ["merjax"]
    assert got["step"] == 7
    np.testing.assert_allclose(np.asarray(got["outputs"], np.float32), want, rtol=1e-5, atol=1e-6)
    assert want.shape == (5, 2)
