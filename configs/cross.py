"""MER-Cross (track 1): the listener's emotion in dyadic clips, 6 classes, WAF.

  python -m merjax.main --config=configs/cross.py --workdir=runs/cross
  python -m merjax.main --config=configs/cross.py:runlocal --workdir=/tmp/cross   # CI-sized
  python -m merjax.main --config=configs/cross.py:real --workdir=runs/cross_real \
      --config.data.manual_dir=/path/to/mer2026-dataset

K-fold cross-validation over track1_train in one command (the MERTools protocol, seeded): each
fold's best-validation-WAF state predicts the candidates, logits are averaged over folds, and
<workdir>/answer.csv + answer.zip are written. Without data.manual_dir a generated demo release is
used (and announced as such). The defaults are sized for the demo release; `:real` sizes the
schedule for the real one (variants combine: `configs/cross.py:real,input_kind=raw`).

`:mertools` swaps in MERTools' own `attention` baseline and its training recipe (MER2026.md §2.6,
§2.7), combinable with the others: `configs/cross.py:real,mertools` is the official baseline's
100 epochs per fold, `configs/cross.py:bench,mertools` its shapes for the benchmark.
"""
import ml_collections

from configs import clips, common


def get_config(arg=None):
    arg = common.parse_arg(arg, runlocal=False, real=False, bench=False, mertools=False,
                           input_kind="features", size="S")
    common.check_sizes(arg)
    c = common.base_config()
    c.task = "cross"

    c.data = clips.data(arg.input_kind, text_language="chinese")
    c.mesh.cpu_devices = clips.cpu_devices(arg.input_kind)
    c.cv = ml_collections.ConfigDict(dict(folds=5, seed=0))

    c.model = clips.model()
    # Measured with the wide path on two independent releases (tests/test_learning.py): without
    # it the logits grow until the train loss is 0 by step ~100 and held-out WAF stays below the
    # logistic read-out (candidates 0.85 vs 0.90); with 0.2 it matches it (0.90, 0.99).
    c.label_smoothing = 0.2

    clips.demo_schedule(c)  # per fold

    if arg.real:
        # track1_train holds 9,395 clips; each of the 5 folds trains on ~7,516 of them: 235 steps
        # of 32 per epoch, so the demo-sized 300 steps would be 1.3 epochs. MERTools trains 100
        # epochs at batch 32 (Adam, lr 1e-3, weight decay 1e-5) and keeps each fold's epoch with
        # the best validation WAF; so does this: 23,500 steps per fold, evaluated every epoch.
        c.total_steps = 23_500
        c.optim.warmup_steps = 235  # one epoch
        c.log_every = 235
        c.eval_every = 235
        c.eval_batch_size = 128  # ~1,879 validation clips a fold: 15 batches per evaluation
        c.checkpoint_every = 2_350
        # 29,395 clips (train + candidates): ~11 KB each with utterance features, ~0.3 MB raw
        # (log-mel + faces); 16 shards keep a raw shard near 0.5 GB.
        c.data.num_shards = 16
    if arg.bench:
        # The MERTools baseline's shapes: batch 32, utterance features of 1024/1024/768 dims
        # (add --config.data.feature_level=frame for 32-step frame-level sequences).
        c.data.feature_dims = (1024, 1024, 768)
        c.batch_size = 32
    if arg.runlocal:
        clips.runlocal(c)
        c.cv.folds = 2
    if arg.mertools:
        if arg.size != "S":
            raise ValueError(f"Config variant 'size={arg.size}' sizes the fusion transformer; "
                             f"'mertools' is MERTools' own model (its size: model.hidden)")
        mertools(c, keep_sizes=arg.runlocal)
    return common.apply_size(c, arg.size)


def mertools(c, keep_sizes=False):
    """MERTools' `attention` model and recipe (main-release.py, model-tune.yaml). MERTools
    draws hidden_dim from {64, 128, 256}, dropout from {0.2, 0.3, 0.4, 0.5} and lr from
    {1e-3, 1e-4} anew for every run (50 runs, top 10 reported); one run here is one fixed
    point of that grid: hidden 128, the middle size (543,369 parameters at the best trio's
    1024/1024/768 dims), dropout 0.3, the middle of the grid's lower half (the inputs are single
    pooled vectors and the folds hold thousands of clips), lr 1e-3, the rate at which 100
    epochs of Adam converge. The rest is fixed in MERTools too: Adam with L2 1e-5 added to the
    gradient (PyTorch's coupled weight_decay), batch 32, a constant rate, no warmup, no
    clipping (grad_clip=-1) and plain cross-entropy. `keep_sizes` (runlocal) keeps the CI
    batch size."""
    c.model = ml_collections.ConfigDict(dict(
        name="mertools_attention", hidden=128, dropout=0.3,
        dtype=c.model.get("dtype", "float32")))  # "bfloat16": computes in bf16
    c.optim.update(name="adam", lr=1e-3, weight_decay=1e-5, schedule="constant",
                   warmup_steps=0, grad_clip_norm=0.0)
    c.label_smoothing = 0.0
    if not keep_sizes:
        c.batch_size = 32
