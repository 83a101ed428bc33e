"""MER-Prefer (track 3): which of two emotion descriptions of a clip humans prefer; two-class WAF.

  python -m merjax.main --config=configs/prefer.py --workdir=runs/prefer
  python -m merjax.main --config=configs/prefer.py:runlocal --workdir=/tmp/prefer   # CI-sized
  python -m merjax.main --config=configs/prefer.py:real --workdir=runs/prefer_real \
      --config.data.manual_dir=/path/to/mer2026-dataset

K-fold cross-validation over the judged rows (folds by clip, drawn when the dataset is built):
each fold keeps its state with the best validation WAF; the candidates' probabilities that a1 is
preferred are averaged over folds and thresholded at 0.5 into <workdir>/answer.csv
(name,a1,a2,preference) + answer.zip. Without data.manual_dir a generated demo release is used
(and announced as such).
"""
import ml_collections

from configs import clips, common


def get_config(arg=None):
    arg = common.parse_arg(arg, runlocal=False, real=False, input_kind="features", size="S")
    common.check_sizes(arg)
    c = common.base_config()
    c.task = "prefer"

    # The descriptions are English, and so is the subtitle the clip encoder reads.
    c.data = clips.data(arg.input_kind, text_language="english")
    c.mesh.cpu_devices = clips.cpu_devices(arg.input_kind)
    # Which judged files train: "emoprefer" (majority of 3 annotators) and/or "emopreferv2"
    # (one annotator).
    c.data.sources = ("emoprefer", "emopreferv2")
    # Clip-disjoint folds of the judged rows, drawn when the dataset is built.
    c.data.num_folds = 5
    c.data.fold_seed = 0
    # Each description's UTF-8 bytes the model reads (cut on a character boundary; answer.csv
    # repeats the whole text). The real ones are paragraphs (the build counts and logs every
    # cut); the demo's are under 200 bytes, padded here.
    c.data.max_description_bytes = 1024
    # Per-row loss weight by source, e.g. less for emopreferv2 (one annotator) than for
    # emoprefer (the majority of three).
    c.source_weights = ml_collections.ConfigDict(dict(emoprefer=1.0, emopreferv2=1.0))
    # Ties (`same`): "soft" trains them towards P(a1 preferred) = 0.5, "drop" leaves them out
    # of the loss (they are never scored: the metric leaves gold ties out).
    c.ties = "soft"

    # The clip encoder is the fusion transformer (its pooled vector, not its logits); the
    # description encoder a byte-level transformer (models/prefer.py).
    c.model = clips.model()
    # `group` bytes make one token: 8 (a word or two of English) keeps 1 KB at 128 tokens.
    c.model.text = ml_collections.ConfigDict(dict(width=64, depth=1, heads=4, mlp_dim=128,
                                                  group=8))
    # The joint space where a clip and a description meet: s(clip, d) = <u(clip), v(d)>.
    c.model.joint_dim = 32
    # The reference read-out (tasks/prefer.reference): fixed random projections of the clip's
    # pooled inputs, each multiplied by the difference of the descriptions' letter profiles.
    c.reference.clip_dims = 64

    # Per fold. On the demo (~86 training rows a fold) validation WAF peaks by step 25-75.
    clips.demo_schedule(c)
    c.total_steps = 150
    c.log_every = c.eval_every = 25
    c.checkpoint_every = 75
    c.optim.weight_decay = 1e-4

    if arg.real:
        # EmoPrefer 574 + EmoPrefer-V2 2,096 judged rows; each of the 5 folds trains on ~2,136:
        # ~67 steps of 32 per epoch. 60 epochs, evaluated every ~3.
        c.total_steps = 4_000
        c.optim.warmup_steps = 200
        c.log_every = 100
        c.eval_every = 200
        c.checkpoint_every = 1_000
        c.eval_batch_size = 128  # 10,000 candidates: 79 batches per fold
        c.data.num_shards = 16  # ~12,700 rows (train + candidates) over ~10,000 clips
    if arg.runlocal:
        clips.runlocal(c)
        c.data.num_folds = 2
        c.data.max_description_bytes = 256  # the demo's are under 200
        c.model.text.update(width=32, depth=1, heads=2, mlp_dim=64)
        c.model.joint_dim = 16
    common.apply_size(c, arg.size)
    if arg.size != "S":  # the description encoder grows with the clip encoder, half as deep
        dims = common.SIZES[arg.size]
        c.model.text.update(dims, depth=max(1, dims["depth"] // 2))
    return c
