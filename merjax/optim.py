"""The optax chain from config.optim: schedule, optional global-norm clipping, AdamW or Adam.

`adamw` decays the weights apart from the gradient (Loshchilov & Hutter). `adam` is PyTorch's
torch.optim.Adam: its weight_decay is an L2 term added to the (clipped) gradient before the
moments, so the decay is rescaled by Adam's per-parameter step like the gradient is; MERTools
trains its baselines so (Adam, lr 1e-3, weight_decay 1e-5), and a config matching them needs it.
"""
import optax

NAMES = ("adamw", "adam")


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
    if optim.name not in NAMES:
        raise ValueError(f"config.optim.name must be one of {NAMES}; found {optim.name!r}")
    lr = schedule(optim, total_steps)
    parts = []
    if optim.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    if optim.name == "adamw":
        parts.append(optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))
    else:
        if optim.weight_decay:
            parts.append(optax.add_decayed_weights(optim.weight_decay))
        parts += [optax.scale_by_adam(b1=optim.b1, b2=optim.b2),
                  optax.scale_by_learning_rate(lr)]
    return optax.chain(*parts), lr
