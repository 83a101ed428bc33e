"""Choosing between the user's real release and the generated demo release, loudly.

Every track calls `choose` with its own demo writer. The choice is logged as a banner (and the
builder records it in the prepared dataset's metadata), so demo data never passes for real data.
"""
import os

from absl import logging

DEMO, REAL = "demo", "real"


def tfds_dir(data_config):
    return os.path.expanduser(data_config.tfds_dir or os.environ.get("TFDS_DATA_DIR")
                              or "~/tensorflow_datasets")


def choose(data_config, track, write_demo):
    """Returns (release_root, kind). With no manual_dir, writes the demo release (if absent)."""
    if data_config.manual_dir:
        root = os.path.abspath(os.path.expanduser(data_config.manual_dir))
        logging.info("%s: REAL release at %s", track, root)
        return root, REAL
    root = data_config.demo_dir or os.path.join(tfds_dir(data_config), "merjax_demo", track)
    root = os.path.abspath(os.path.expanduser(root))
    write_demo(root)
    banner(f"{track}: DEMO DATA. Training on the generated demo release at {root}. "
           f"It is NOT the MER2026 data. For the real release pass "
           f"--config.data.manual_dir=/path/to/the/unzipped/release")
    return root, DEMO


def banner(message):
    line = "!" * min(100, len(message) + 8)
    logging.warning("\n%s\n!!! %s\n%s", line, message, line)
