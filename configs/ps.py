"""MER-PS (track 4): valence and arousal each second from EEG + fNIRS.

  python -m merjax.main --config=configs/ps.py --workdir=runs/ps
  python -m merjax.main --config=configs/ps.py:runlocal --workdir=/tmp/ps   # seconds, CI-sized
  python -m merjax.main --config=configs/ps.py:runlocal,size=M --workdir=/tmp/ps_m  # an M model
  python -m merjax.main --config=configs/ps.py:real --workdir=runs/ps_real \
      --config.data.manual_dir=/path/to/MER_PS_codabench_public_trainval

With no `data.manual_dir` a generated, seeded demo release in the official layout is used
(and announced as such); with it, the real release is built and trained on. The defaults are
sized for the demo release; `:real` sizes the schedule for the real one.
"""
import ml_collections

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, runlocal=False, real=False, size="S")
    common.check_sizes(arg)
    c = common.base_config()
    c.task = "ps"

    c.data = ml_collections.ConfigDict(dict(
        # The unzipped official MER_PS_codabench_public_trainval/ folder; "" = demo release.
        manual_dir="",
        # Where prepared TFDS datasets go; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets.
        tfds_dir="",
        # Demo releases (and their prepared datasets) go under <demo_dir>/mer_ps-<hash of
        # data.demo>/; "" = <tfds_dir>/merjax_demo.
        demo_dir="",
        num_shards=4,
        eeg_rate_hz=128,
        context_s=2,
        fnirs_bins=4,
        fnirs_types=(0, 1, 2),  # HbO, HbR, HbT
        # fNIRS channels are masked by a rule on the signals (tfds_builders/mer_ps/signals.py),
        # the one the code submission applies to hidden subjects, which come without
        # fNIRS_reservations.csv. True also drops the channels that file marks 0, in training
        # only: the model then never reads channels like those it meets unmasked at test.
        fnirs_reservations=False,
        # Subject-disjoint split; the official kit trains on 1-20 and validates on 21-24.
        train_subjects=tuple(range(1, 21)),
        validation_subjects=(21, 22, 23, 24),
        # Training subjects held out of training to select the model state and the
        # reference's penalty; the validation subjects are only evaluated.
        inner_subjects=(17, 18, 19, 20),
        # Examples read to estimate the input normalisation statistics.
        stats_examples=2048,
        demo=ml_collections.ConfigDict(dict(seed=0, num_subjects=24, min_seconds=4,
                                            max_seconds=6, eeg_rate_hz=200)),
    ))

    c.model = ml_collections.ConfigDict(dict(
        name="physio",  # or "ridge": the reference read-out alone (merjax/reference.py)
        width=64,
        depth=2,
        heads=4,
        mlp_dim=128,
        dropout=0.1,
        eeg_patches_per_s=1,  # EEG tokens per second of context (1 s windows: 1 Hz bins)
        # True: predict a residual on the per-(video, second) train-subject mean label (fed in
        # as a token). Off by default: with it, validation MAE was worse on every release we
        # tried (600 steps, 20/4 subjects: demo 15.7 vs 11.6 without; independent HbO/theta
        # release 17.8 vs 11.0; gamma/HbR at 1 kHz 13.8 vs 9.4; prior alone 19.5 / 25.0 / 24.7).
        use_prior=False,
        **common.model_switches(),
    ))
    # "l1" serves the official MAE directly; "huber" is smoother near zero.
    c.loss = "l1"
    c.huber_delta = 0.02

    c.total_steps = 600
    c.batch_size = 64
    c.eval_batch_size = 128
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 200
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 30

    if arg.real:
        # The real release holds 24 subjects x 15 videos, 36,864 label seconds (~1,536 per
        # subject), so the 20 train subjects give ~30,700 examples: 480 steps of 64 per epoch.
        # The demo-sized 600 steps would be 1.25 epochs; 12,000 are 25. Fewer than track 1's 100:
        # the inner subjects pick the best of only 12 evaluations, so the schedule still bounds
        # how far the model fits the training subjects.
        c.total_steps = 12_000
        c.optim.warmup_steps = 480  # one epoch
        c.log_every = 100
        c.eval_every = 1_000  # ~2 epochs; validation (subjects 21-24) is ~6,100 examples
        c.checkpoint_every = 1_000
        # ~70 KB an example (EEG 64 x 256 float32 dominates): ~2.2 GB of train records, ~135 MB
        # a shard.
        c.data.num_shards = 16
    if arg.runlocal:
        c.data.num_shards = 2
        c.data.train_subjects = (1, 2, 3)
        c.data.inner_subjects = (3,)
        c.data.validation_subjects = (4,)
        c.data.stats_examples = 128
        c.data.demo.num_subjects = 4
        c.data.demo.min_seconds = 2
        c.data.demo.max_seconds = 3
        c.model.width = 32
        c.model.depth = 1
        c.model.mlp_dim = 64
        c.model.heads = 2
        c.total_steps = 20
        c.batch_size = 16
        c.eval_batch_size = 16
        c.log_every = 5
        c.eval_every = 10
        c.checkpoint_every = 10
        c.optim.warmup_steps = 2
    return common.apply_size(c, arg.size)
