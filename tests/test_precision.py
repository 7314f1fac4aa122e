"""Mixed precision computes the same gradients as float32, to the rounding of its compute dtype."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vae.models.vae import VAE
from keras_vae.networks import ARCHITECTURES
from keras_vae.train import dtype_policy

# Relative L2 error of a variable's gradient against float32. bfloat16 keeps 8 significant bits
# (2^-8 = 0.4% per rounding); through a whole network the honest errors measured 0.2-6% on an Intel Xeon with
# AMX, and up to 10.8% on an AMD EPYC without native bf16, at the Dense layers that feed transposed
# convolutions (`conv`, `conv1d`): rounding added up on the way back, every bias within 7.5%. A bias gradient
# summed over batch x pixels in bfloat16 was off by 74-93%: 15% tells the two apart on both machines.
TOLERANCE = {"mixed_bfloat16": 0.15}
SHAPE = {"conv-64": (32, 32, 1), "broadcast-64": (32, 32, 1),  # what their stride-2 layers divide; 28x28 else
         "conv1d": (64, 2)}  # signals [T, C]


def image_shape(architecture):
    return SHAPE.get(architecture, (28, 28, 1))


def gradients(precision, architecture, weights, x):
    with dtype_policy(precision):
        model = VAE(tuple(x.shape[1:]), latent_dim=4, architecture=architecture, kl_warmup_steps=0, seed=3)
    if weights is not None:
        model.set_weights(weights)
    with tf.GradientTape() as tape:
        loss = model.objective(model.compute_terms(x, training=True), tf.constant(1.0))
    return model, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("precision", sorted(TOLERANCE))
@pytest.mark.parametrize("architecture", ARCHITECTURES.names())
def test_every_gradient_under_mixed_precision_matches_float32(architecture, precision):
    keras.utils.set_random_seed(0)
    x = tf.constant((np.random.default_rng(0).random((128, *image_shape(architecture))) < 0.3).astype(np.float32))
    reference, expected = gradients("float32", architecture, None, x)
    _, got = gradients(precision, architecture, reference.get_weights(), x)
    errors = {}
    for variable, g, g_mixed in zip(reference.trainable_variables, expected, got):
        g_mixed = tf.cast(g_mixed, tf.float32)
        errors[variable.path] = float(tf.norm(g_mixed - g) / tf.maximum(tf.norm(g), 1e-12))
    tolerance = TOLERANCE[precision]
    bad = {path: round(e, 3) for path, e in errors.items() if e > tolerance}
    assert not bad, f"gradients off by more than {tolerance:.0%} (relative L2): {bad}"
