"""Datasets by name (`load_dataset`) and the tf.data input pipeline."""
