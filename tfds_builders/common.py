"""What every track's builder shares: one error type, manual_dir handling, the registry of
derived BuilderConfigs, the demo-vs-real check, and the identity of a release on disk.

A builder module (`tfds_builders/<track>/<track>_dataset_builder.py`) offers the training side
exactly this, and merjax/data/prepare.py uses nothing else:
  Builder                                  the tfds GeneratorBasedBuilder
  DEMO_NAME                                folder name of its demo release (tracks may share one)
  write_demo(root, demo)                   writes the demo release for `config.data.demo`
  builder_config(data, root, *, release, release_id)
                                           `config.data` -> the BuilderConfig (fixed shapes in
                                           its FeaturesDict; tasks read shapes from there)
  release_sources(data, root)              the files and folders a build reads (their identity
                                           names the prepared dataset)
Nothing under tfds_builders imports the training package (merjax); merjax imports from here.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


class ReleaseError(ValueError):
    """A release on disk is missing, malformed or inconsistent with its documented layout.

    The message names the file (and row, variable or column), what was expected and what was
    found.
    """


def manual_dir(dl_manager, track: str, hint: str) -> Path:
    """The builder's manual_dir, or a ReleaseError that says how to pass one."""
    try:
        return Path(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS's way of saying the folder is missing or empty
        reason = str(e).splitlines()[0].split(" Create it")[0]
        raise ReleaseError(f"{track} manual_dir unusable: {reason} {hint}") from e


def check_kind(root: Path, found: str, expected: str, marker: str) -> None:
    """A generated demo release never passes for the real one, nor the other way round."""
    if found == expected:
        return
    if found == "demo":
        raise ReleaseError(
            f"{root}: is a generated demo release (marker file {root / marker}) but the config "
            f"expects release='real'; a demo must never pass as the real data")
    raise ReleaseError(
        f"{root}: expected a generated demo release (marker file {root / marker}), found none: "
        f"this looks like the real release but the config says release='demo'")


class ConfigRegistry:
    """Builds a track's BuilderConfig from fields; equal fields give the *same* instance.

    TFDS refuses a config instance that is not the registered one under the same name
    ("Cannot name a custom BuilderConfig the same as an available BuilderConfig"), so a config
    made twice must be handed back as the first one. Treat returned configs as immutable.
    """

    def __init__(self, config_cls):
        self._cls, self._configs = config_cls, {}

    def __call__(self, **fields):
        config = self._cls(**fields)
        return self._configs.setdefault(config.name, config)


def release_fingerprint(sources) -> str:
    """12 hex digits over every file under `sources`: path, size and modification time.

    Another release, or the same release changed in place, gets another fingerprint, and so
    another prepared dataset. Only names and stat() are read (no file contents), so even the
    132k-clip MER2026 release is fingerprinted in seconds. Files are those the readers see
    (`walk_files`).
    """
    digest = hashlib.sha256()
    for source in sorted(Path(s).absolute() for s in sources):
        digest.update(f"source {source}\n".encode())
        if source.is_file():
            entries = [(source.name, source.stat())]
        elif source.is_dir():
            entries = sorted((os.path.relpath(e.path, source), e.stat())
                             for e in walk_files(source))
        else:
            entries = [("<missing>", None)]
        for rel, st in entries:
            stamp = "-" if st is None else f"{st.st_size} {st.st_mtime_ns}"
            digest.update(f"{rel}\0{stamp}\n".encode())
    return digest.hexdigest()[:12]


def walk_files(top: Path):
    """os.DirEntry of every file under `top` at any depth, following symlinks but never a
    folder twice.

    Hidden entries and `__MACOSX` are skipped: unzip on macOS leaves `._<name>.wav` resource
    forks that would otherwise look like extra samples, and a `.DS_Store` is no part of a release.
    """
    seen, stack = set(), [str(top)]
    while stack:
        folder = stack.pop()
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith(".") or entry.name == "__MACOSX":
                    continue
                if entry.is_dir():
                    stack.append(entry.path)
                elif entry.is_file():
                    yield entry
