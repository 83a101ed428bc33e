"""MER-Prefer (MER2026 track 3): the TFDS builder (`mer_prefer_dataset_builder`) over the shared
release reader `tfds_builders.mer2026`. Nothing is imported here, so importing the package does
not register the builder with TFDS."""
