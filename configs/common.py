"""Pieces every track's config shares: run keys, mesh, sharding rules, optimiser, arg parsing,
model sizes.

Configs hold plain data only (numbers, strings, tuples); code chooses models and tasks by name.
The run keys users reach for are named the same in every track: `seed`, `total_steps`,
`log_every`, `eval_every`, `checkpoint_every`, `data.manual_dir`, `mesh.data|fsdp|model`.
"""
import ml_collections

# `:size=` variants of every track's transformer (`S` is the config's own model: the defaults,
# or runlocal's tiny one). XL passes 100M parameters in MER-PS's physio encoder and in the clip
# tracks' fusion transformer (tests/test_switches.py counts them).
SIZES = {
    "M": dict(width=256, depth=4, heads=8, mlp_dim=1024),
    "L": dict(width=512, depth=8, heads=8, mlp_dim=2048),
    "XL": dict(width=1024, depth=10, heads=16, mlp_dim=4096),
}


def parse_arg(arg, **defaults):
    """Parses the `:key=value,flag` suffix of `--config=configs/x.py:...` into typed values.

    A bare name (`runlocal`) sets a boolean default to True. Unknown names are errors, so a typo in
    a variant never silently runs the full-size config.
    """
    parsed = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(
                f"Unknown config variant {key!r} in {arg!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if not value:
            if not isinstance(default, bool):
                raise ValueError(f"Config variant {key!r} needs a value, e.g. {key}={default!r}")
            parsed[key] = True
        elif isinstance(default, bool):
            parsed[key] = value.lower() in ("1", "true", "yes")
        else:
            parsed[key] = type(default)(value)
    return ml_collections.ConfigDict(parsed)


def check_sizes(arg):
    """`runlocal` (seconds, CI) and `real` (the real release's schedule) size a run two ways."""
    if arg.runlocal and arg.real:
        raise ValueError("Config variants 'runlocal' and 'real' contradict each other; pick one")


def apply_size(c, size):
    """Sets the transformer's dims for `size` and records it (`c.model.size`). Applied after
    runlocal / real, so `:runlocal,size=M` keeps runlocal's data and schedule with an M model."""
    if size != "S" and size not in SIZES:
        raise ValueError(f"Unknown model size {size!r} in config variant 'size'; known: "
                         f"{', '.join(('S',) + tuple(SIZES))}")
    c.model.size = size
    if size != "S":
        c.model.update(SIZES[size])
    return c


def model_switches():
    """The model keys every track shares: its size, precision and memory switches
    (models/layers.py)."""
    return dict(
        size="S",  # set by the `:size=` variant (apply_size)
        # "bfloat16": compute in bf16; parameters and optimizer state stay float32.
        dtype="float32",
        remat=False,  # recompute each transformer block's activations in the backward pass
        scan_layers=False,  # stack the blocks and apply them with a scan (one block compiled)
    )


def base_config():
    """Keys shared by every track; each track's get_config fills in task, data and model."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.log_every = 50
    c.eval_every = 250
    c.checkpoint_every = 250
    c.keep_checkpoints = 2
    # Global batch sizes (all processes together); must divide by data x fsdp mesh size.
    c.batch_size = 64
    c.eval_batch_size = 64

    # -1 takes the devices the other axes leave. `devices` > 0 uses only the first N devices
    # (single process), e.g. to compare 1 device against 8 in one process. `cpu_devices` > 0
    # splits a CPU backend into that many devices (sharding.split_host_cpu; -1: JAX's 1).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1, devices=-1,
                                            cpu_devices=-1))
    c.sharding = ml_collections.ConfigDict()
    # Logical axis name -> mesh axes. Scaling experiments change this table, never model code.
    # Weights shard their `embed` dim over fsdp (ZeRO-3 style) and mlp/heads over model (TP).
    c.sharding.rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "model"),
        ("heads", "model"),
        ("kv", None),
        ("features", None),
        ("tokens", None),
        ("outputs", None),
        ("layers", None),  # the stacked blocks of model.scan_layers
    )

    c.optim = ml_collections.ConfigDict(dict(
        # "adamw" (decoupled weight decay) or "adam" (PyTorch's Adam: weight_decay is an L2
        # term added to the gradient before the moments, as MERTools trains its baselines).
        name="adamw",
        lr=1e-3,
        weight_decay=1e-4,
        b1=0.9,
        b2=0.999,
        warmup_steps=50,
        schedule="cosine",  # or "constant"
        end_lr_fraction=0.05,
        grad_clip_norm=1.0,  # <= 0 disables clipping
        # Gradients averaged over this many micro-batches of batch_size / accum_steps examples
        # in one step (one update): activations of a micro-batch only.
        accum_steps=1,
    ))
    # The linear reference read-out fitted beside every model (merjax/reference.py): the L2
    # penalties it chooses from on the selection split, and L-BFGS iterations (logistic).
    c.reference = ml_collections.ConfigDict(dict(l2=(1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0),
                                                 iterations=300))
    # The input pipeline (merjax/data/pipeline.py). Each split a run reads (train, validation,
    # candidates, ...) is transformed once into memory, in the order they are first read, while
    # together they fit in cache_bytes (-1: a quarter of the host's memory, per process: with
    # several processes on one host set each one's share; 0: never); every fold's training,
    # evaluation and reference read-out gather from it (real MER-Cross track1_train: ~0.1 GB of
    # utterance features, ~2.8 GB raw). A split that does not fit is read and transformed per
    # batch, for training in read_threads threads, prefetch_batches ahead. A held split that
    # fits device_cache_bytes of each device's memory (-1: a quarter of an accelerator's, none
    # on a CPU; 0: never) is copied to every device, and its training batches are gathered
    # there (merjax/data/on_device.py): no host gather or transfer per step. One gather makes
    # device_gather_batches consecutive batches (at most 256 MB of them, one array per dtype),
    # since each call that sends indices from the host costs more than a small model's share of
    # a step (on an H200, 32 a gather gave every default config's pipeline 10x its training's
    # samples/s; 16 left MER-Cross at 8.7-9.5x).
    c.pipeline = ml_collections.ConfigDict(dict(cache_bytes=-1, read_threads=4,
                                                prefetch_batches=4, device_cache_bytes=-1,
                                                device_gather_batches=32))
    # Multi-host: call jax.distributed.initialize() before any JAX op (Slurm/TPU auto-detect).
    c.distributed = False
    return c
