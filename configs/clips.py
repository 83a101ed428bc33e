"""What the clip tracks' configs (MER-Cross, MER-FG, MER-Prefer) share: the clip inputs of the
MER2026 release (`config.data`), the fusion model, and their CI-sized (`runlocal`) settings."""
import ml_collections

from configs import common


def data(input_kind, text_language):
    return ml_collections.ConfigDict(dict(
        manual_dir="",  # the mer2026-dataset/ folder; "" = demo release
        tfds_dir="",    # "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
        demo_dir="",    # "" = <tfds_dir>/merjax_demo; the release is shared by tracks 1-3
        num_shards=4,
        input_kind=input_kind,  # "features" (MERTools feature folders) or "raw"
        features_root="",  # "" = <manual_dir>/features
        # MERTools feature folders per modality; the track-1 baseline's best trio by default.
        features=ml_collections.ConfigDict(dict(
            audio="chinese-hubert-base-UTT", text="chinese-macbert-large-UTT",
            video="clip-vit-large-patch14-UTT")),
        # (audio, text, video) dims; () = read them from the folders (every file is checked).
        feature_dims=(),
        feature_level="utt",  # "utt": (1, D) per clip; "frame": (<= max_frames, D)
        max_frames=32,
        # Raw inputs, computed at build time with no pretrained model.
        n_mels=80, max_audio_s=8.0, num_faces=8, face_size=48, text_language=text_language,
        max_text_bytes=256,
        # "error": a missing input stops the build. "skip": every clip is kept, a missing input
        # is masked, a clip with none gets the track's fallback answer; all counted and
        # reported (tfds_builders/mer2026/clips.py).
        on_missing="error",
        # Clips read to estimate the input standardisation (per feature / mel dimension).
        stats_examples=4096,
        # --mode=predict: another candidate file, with the official candidate file's columns,
        # answered by the trained states (merjax/train.py predict_candidates); "" = the
        # release's own candidates, answered as in training.
        candidates="",
        demo=ml_collections.ConfigDict(dict(seed=0, scale=2.0)),
    ))


def cpu_devices(input_kind):
    """config.mesh.cpu_devices: raw inputs split a CPU backend into 2 devices (merjax/sharding.py:
    split_host_cpu). On the 2-core CPU their steps ran faster that way, 1 device against 2 in
    alternated bench runs: MER-Cross 1.36-1.41x, MER-FG 1.12-1.24x, MER-Prefer 1.34x (one
    pair). The feature inputs' steps take milliseconds and keep JAX's one device."""
    return 2 if input_kind == "raw" else -1


def model():
    return ml_collections.ConfigDict(dict(
        # "fusion", or the track's reference read-out alone (merjax/reference.py; MER-Cross
        # and MER-FG: "logistic").
        name="fusion",
        width=64, depth=2, heads=4, mlp_dim=128, dropout=0.2,
        fusion="joint",  # or "bottleneck"
        bottlenecks=4, modality_dropout=0.1,
        # A linear path from the pooled, standardised inputs to the outputs (models/fusion.py).
        wide=True,
        **common.model_switches(),
    ))


def demo_schedule(c):
    """Per fold, sized for the demo release (a few hundred clips): minutes on two CPU cores."""
    c.total_steps = 300
    c.batch_size = 32
    c.eval_batch_size = 32
    c.log_every = 50
    c.eval_every = 50
    c.checkpoint_every = 100
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 1e-5


def runlocal(c):
    """Seconds on two CPU cores: a small demo release, small inputs, a tiny model."""
    c.data.num_shards = 2
    c.data.demo.scale = 0.5
    c.data.max_audio_s = 2.0
    c.data.num_faces = 4
    c.data.face_size = 16
    c.data.max_text_bytes = 64
    c.model.width = 32
    c.model.depth = 1
    c.model.mlp_dim = 64
    c.model.heads = 2
    c.total_steps = 12
    c.batch_size = 16
    c.eval_batch_size = 16
    c.log_every = 4
    c.eval_every = 4
    c.checkpoint_every = 6
    c.optim.warmup_steps = 2
