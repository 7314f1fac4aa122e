"""Runs in its own process (the CPU must be split before TensorFlow starts).

Trains every registered model (and the EMA VQ-VAE, an NVAE with an
autoregressive top prior, and a weight-normalized one whose groups' KL are all
floored) for two epochs under MirroredStrategy on two CPU
replicas and prints, per model, its losses, whether every trainable weight
moved, and whether its non-trainable EMA state moved.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import SMALL_NVAE, config_for, tiny_images  # noqa: E402
from keras_vae.distribute import split_cpu  # noqa: E402
from keras_vae.models import build_model, model_names  # noqa: E402

split_cpu(2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
x = (tiny_images(64) / 255).astype(np.float32)
y = (np.arange(64) % 3).astype(np.int32)
report = {}
VARIANTS = {"vq_vae-ema": ("vq_vae", {"vq_ema": True}),
            "nvae-autoregressive": ("nvae", {"top_prior": "autoregressive", "top_prior_components": 2,
                                             "top_prior_filters": 4}),
            # Weight-normalized, and every group's KL floored (so the prior's networks learn by its fit alone).
            "nvae-weight-norm-floored": ("nvae", {"weight_norm": True, "top_prior": "autoregressive",
                                                  "top_prior_components": 2, "top_prior_filters": 4,
                                                  "top_prior_per_group": True, "group_free_bits": 1000.0})}
for key, (name, extra) in [(n, (n, {})) for n in model_names()] + list(VARIANTS.items()):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        config = config_for(name, latent_dim=4, kl_warmup_steps=0, codebook_size=16, codebook_dim=2,
                            **(SMALL_NVAE if name == "nvae" else {}), **extra)
        model = build_model(config, (28, 28, 1), num_classes=3)
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = [w.numpy().copy() for w in model.weights]
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    history = model.fit(data, epochs=2, verbose=0).history
    moved = [not np.allclose(b, w.numpy()) for b, w in zip(before, model.weights)]
    trainable = {id(w) for w in model.trainable_weights}
    report[key] = {
        "loss": [float(v) for v in history["loss"]],
        "all_trainable_moved": all(m for m, w in zip(moved, model.weights) if id(w) in trainable),
        "moved_state": sorted(w.name for m, w in zip(moved, model.weights) if m and id(w) not in trainable),
    }
json.dump(report, sys.stdout)
