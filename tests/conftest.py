"""Test set-up that must happen before JAX initialises its backend.

8 fake CPU devices let every sharding test build a real (data, fsdp, model) mesh on a CPU-only
machine; the flags only take effect if set before the first backend use, hence at import time here.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same tiny programs (every fold, every resumed run): a persistent
# compilation cache for the session turns repeats into cache hits.
import tempfile  # noqa: E402
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="merjax-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (must come after the environment above)

jax.config.update("jax_num_cpu_devices", 8)

from absl import flags  # noqa: E402

# grain reads absl flags lazily; under pytest nobody parses them (google/grain#1355).
flags.FLAGS.mark_as_parsed()
