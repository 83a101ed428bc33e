"""MER-FG (MER2026 track 2): the TFDS builder (`mer_fg_dataset_builder`) over the shared release
reader `tfds_builders.mer2026` and its emotion wheel. Nothing is imported here, so importing the
package does not register the builder with TFDS."""
