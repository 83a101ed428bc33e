"""Choosing between the user's real release and the generated demo release, loudly.

Every track calls `choose` with its own demo writer. The choice is logged as a banner (and the
builder records it in the prepared dataset's metadata), so demo data never passes for real data.
"""
import hashlib
import json
import os
import shutil

from absl import logging

DEMO, REAL = "demo", "real"


def tfds_dir(data_config):
    return os.path.expanduser(data_config.tfds_dir or os.environ.get("TFDS_DATA_DIR")
                              or "~/tensorflow_datasets")


def choose(data_config, track, write_demo):
    """Returns (release_root, kind, prepared_data_dir).

    With data.manual_dir: the user's real release, prepared into the TFDS data dir. Without: the
    demo release, generated once per demo setting into its own folder (so two demo settings never
    share a release or a prepared dataset), and a banner saying so.
    """
    if data_config.manual_dir:
        root = os.path.abspath(os.path.expanduser(data_config.manual_dir))
        logging.info("%s: REAL release at %s", track, root)
        return root, REAL, tfds_dir(data_config)
    demo = data_config.demo.to_dict()
    digest = hashlib.sha256(json.dumps(demo, sort_keys=True).encode()).hexdigest()[:8]
    base = data_config.demo_dir or os.path.join(tfds_dir(data_config), "merjax_demo")
    home = os.path.join(os.path.abspath(os.path.expanduser(base)), f"{track}-{digest}")
    root = os.path.join(home, "release")
    if not os.path.isdir(root):
        # Written aside and renamed, so a killed run never leaves a half-written release behind.
        partial = f"{root}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        write_demo(partial)
        os.replace(partial, root)
    banner(f"{track}: DEMO DATA. Training on the generated demo release at {root} ({demo}). "
           f"It is NOT the MER2026 data. For the real release pass "
           f"--config.data.manual_dir=/path/to/the/unzipped/release")
    return root, DEMO, os.path.join(home, "tfds")


def banner(message):
    line = "!" * min(100, len(message) + 8)
    logging.warning("\n%s\n!!! %s\n%s", line, message, line)
