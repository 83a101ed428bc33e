"""The optax chain from config.optim: schedule, optional global-norm clipping, AdamW."""
import optax


def schedule(optim, total_steps):
    warmup = max(int(optim.warmup_steps), 0)
    if optim.schedule == "constant":
        decay = optax.constant_schedule(optim.lr)
    elif optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(
            optim.lr, max(total_steps - warmup, 1), alpha=optim.end_lr_fraction)
    else:
        raise ValueError(f"config.optim.schedule must be 'cosine' or 'constant'; "
                         f"found {optim.schedule!r}")
    if not warmup:
        return decay
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, warmup), decay], boundaries=[warmup])


def make(optim, total_steps):
    """Returns (GradientTransformation, learning-rate schedule)."""
    if optim.name != "adamw":
        raise ValueError(f"config.optim.name must be 'adamw'; found {optim.name!r}")
    lr = schedule(optim, total_steps)
    parts = []
    if optim.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    parts.append(optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))
    return optax.chain(*parts), lr
