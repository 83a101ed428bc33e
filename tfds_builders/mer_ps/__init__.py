"""MER-PS (track 4): release reader (`release`), demo release (`demo`) and the TFDS builder
(`mer_ps_dataset_builder`). Nothing is imported here so that `demo` and `release` stay usable
without importing TFDS."""
