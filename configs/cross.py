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
"""
import ml_collections

from configs import clips, common


def get_config(arg=None):
    arg = common.parse_arg(arg, runlocal=False, real=False, bench=False, input_kind="features")
    common.check_sizes(arg)
    c = common.base_config()
    c.task = "cross"

    c.data = clips.data(arg.input_kind, text_language="chinese")
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
    return c
