"""Pieces every track's config shares: run keys, mesh, sharding rules, optimiser, arg parsing.

Configs hold plain data only (numbers, strings, tuples); code chooses models and tasks by name.
The run keys users reach for are named the same in every track: `seed`, `total_steps`,
`log_every`, `eval_every`, `checkpoint_every`, `data.manual_dir`, `mesh.data|fsdp|model`.
"""
import ml_collections


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
    # (single process), e.g. to compare 1 device against 8 in one process.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1, devices=-1))
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
    )

    c.optim = ml_collections.ConfigDict(dict(
        name="adamw",
        lr=1e-3,
        weight_decay=1e-4,
        b1=0.9,
        b2=0.999,
        warmup_steps=50,
        schedule="cosine",  # or "constant"
        end_lr_fraction=0.05,
        grad_clip_norm=1.0,  # <= 0 disables clipping
    ))
    # The linear reference read-out fitted beside every model (merjax/reference.py): the L2
    # penalties it chooses from on the selection split, and L-BFGS iterations (logistic).
    c.reference = ml_collections.ConfigDict(dict(l2=(1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0),
                                                 iterations=300))
    # Multi-host: call jax.distributed.initialize() before any JAX op (Slurm/TPU auto-detect).
    c.distributed = False
    return c
