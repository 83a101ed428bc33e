"""MER-PS code submission, written by `python -m merjax.predict --package_ps` (merjax).

Needs jax, numpy and scipy only, and no network. The challenge imports this file from the root
of the unzipped submission and calls `predict(input_dir, output_dir)`: `input_dir` holds
`sample_ids.csv` and `data/<subject>/{EEG,fNIRS}_{baselines,videos}.mat`; the answer goes to
`<output_dir>/predictions.csv` (`sample_id,valence,arousal`, every id once, integers in
[1, 255]). Beside this file: `predict.jax` (the network, a jax.export artifact), `params.npz`
(its parameters), `signature.json` (its inputs, the preprocessing settings, the training
subjects' per-(video, second) label prior) and the preprocessing code the training data was
built with (`tfds_builders/`, `merjax/submission.py`).
"""
import json
import os
import sys

_MISSING = []
for _name in ("jax", "numpy", "scipy"):
    try:
        __import__(_name)
    except ImportError:
        _MISSING.append(_name)
if _MISSING:
    raise ImportError(f"this MER-PS submission needs jax, numpy and scipy; missing: "
                      f"{', '.join(_MISSING)} (pip install {' '.join(_MISSING)})")

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # the carried preprocessing code, before any installed copy


def predict(input_dir, output_dir):
    """Writes `<output_dir>/predictions.csv` for every id of `<input_dir>/sample_ids.csv`."""
    import jax
    from merjax import submission
    with open(os.path.join(HERE, "signature.json")) as f:
        signature = json.load(f)
    with open(os.path.join(HERE, "predict.jax"), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    params = submission.load_params_npz(os.path.join(HERE, "params.npz"))
    fn = jax.jit(exported.call)
    return submission.ps_predict(input_dir, output_dir, call=lambda x: fn(params, x),
                                 signature=signature)
