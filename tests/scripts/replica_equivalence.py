"""Runs in its own process (the CPU must be split before TensorFlow starts).

Trains the same deterministic-code VAE with SGD for a few steps on one device
and on two mirrored CPU replicas, and prints both results as JSON.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_vae import losses  # noqa: E402
from keras_vae.distribute import split_cpu  # noqa: E402
from keras_vae.models.vae import VAE  # noqa: E402

split_cpu(2)


class DeterministicVAE(VAE):
    """z = E_q[z]: no sampling noise, so 1 and 2 replicas must agree to float precision."""

    def compute_terms(self, x, training=False, y=None):
        posterior = self.posterior(x, training=training)
        reconstruction_loss = -self.likelihood(posterior.mean(), training=training).log_prob(x)
        kl = losses.kl_divergence(posterior, self.prior())
        return {"reconstruction_loss": reconstruction_loss, "kl": kl, "elbo": -(reconstruction_loss + kl),
                "kl_per_dim": None}


def train(strategy, x):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = DeterministicVAE((8, 8, 1), latent_dim=2)
        model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.initial_weights = model.get_weights()
    data = tf.data.Dataset.from_tensor_slices(x).batch(32)
    history = model.fit(data, epochs=3, verbose=0, shuffle=False).history
    return model, history


x = (np.random.default_rng(0).random((96, 8, 8, 1)) > 0.5).astype(np.float32)
one, history_one = train(tf.distribute.OneDeviceStrategy("/cpu:0"), x)
mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
two, history_two = train(mirrored_strategy, x)
seeds = mirrored_strategy.run(lambda: VAE.noise_seed(two))
json.dump(
    {
        "replicas": mirrored_strategy.num_replicas_in_sync,
        "max_weight_difference": max(float(np.max(np.abs(a - b))) for a, b in zip(one.get_weights(), two.get_weights())),
        "max_weight_change": max(float(np.max(np.abs(a - b))) for a, b in zip(one.get_weights(), one.initial_weights)),
        "loss_one": history_one["loss"],
        "loss_two": history_two["loss"],
        "replica_seeds": [s.numpy().tolist() for s in mirrored_strategy.experimental_local_results(seeds)],
    },
    sys.stdout,
)
