"""The quantizers: VQ against brute force, EMA codebooks, dead-code restarts, and FSQ."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vae.errors import UserError
from keras_vae.models.vq import code_grid
from keras_vae.quantizers import (FiniteScalarQuantizer, VectorQuantizer, fsq_bound, nearest_codes, parse_levels,
                                  perplexity, used_codes)


def test_the_quantizer_picks_the_nearest_entry_and_counts_usage():
    rng = np.random.default_rng(0)
    z, codebook = rng.normal(size=(5, 7, 3)).astype(np.float32), rng.normal(size=(11, 3)).astype(np.float32)
    brute = np.argmin(((z[:, :, None, :] - codebook[None, None]) ** 2).sum(-1), axis=-1)
    np.testing.assert_array_equal(nearest_codes(tf.constant(z), tf.constant(codebook)), brute)
    assert float(perplexity(tf.constant([0, 1, 2, 3] * 5), 8)) == pytest.approx(4.0)
    assert float(perplexity(tf.constant([5] * 9), 8)) == pytest.approx(1.0)
    assert float(used_codes(tf.constant([[3, 3], [1, 7]]))) == 3


@pytest.mark.parametrize("shape", [(2, 1, 32, 16), (3, 4, 4, 16), (6, 16)])
def test_nearest_codes_is_exact_for_every_code_map_shape(shape):
    """A code row [B, 1, T, D] is what 1-D models quantize; TF's broadcast batch matmul got that shape
    wrong on AVX512 EPYC CPUs, so the search must not depend on it."""
    rng = np.random.default_rng(1)
    z, codebook = rng.normal(size=shape).astype(np.float32), rng.normal(size=(16, 16)).astype(np.float32)
    brute = np.argmin(((z[..., None, :] - codebook) ** 2).sum(-1), axis=-1)
    indices = nearest_codes(tf.constant(z), tf.constant(codebook))
    assert indices.shape == shape[:-1]
    np.testing.assert_array_equal(indices, brute)
    assert [code_grid(n) for n in (16, 12, 7, 1)] == [(4, 4), (3, 4), (1, 7), (1, 1)]


def test_a_vq_layer_maps_each_vector_to_its_nearest_entry_with_the_vq_losses():
    quantizer = VectorQuantizer(11, 3, commitment=0.25)
    rng = np.random.default_rng(1)
    z = tf.constant(rng.normal(size=(2, 4, 5, 3)).astype(np.float32))
    codebook = quantizer.codebook.numpy()
    out = quantizer(z)
    brute = np.argmin(((z.numpy()[..., None, :] - codebook) ** 2).sum(-1), axis=-1)
    np.testing.assert_array_equal(out["indices"], brute)
    np.testing.assert_allclose(out["quantized"], codebook[brute], atol=1e-6)  # forward: the entries
    distance = ((z.numpy() - codebook[brute]) ** 2).sum(-1)
    np.testing.assert_allclose(out["loss"], 1.25 * distance, rtol=1e-5)  # codebook term + β·commitment
    with tf.GradientTape() as tape:  # backward: the identity to z (straight through)
        tape.watch(z)
        total = tf.reduce_sum(quantizer(z)["quantized"] * tf.range(3, dtype=tf.float32))
    np.testing.assert_allclose(tape.gradient(total, z), np.broadcast_to([0.0, 1.0, 2.0], z.shape))


def test_ema_codebook_converges_to_the_mean_of_its_vectors():
    keras.utils.set_random_seed(2)  # the same initial codebook whatever ran before
    quantizer = VectorQuantizer(8, 3, ema=True)
    assert not quantizer.codebook.trainable
    codebook = quantizer.codebook.numpy()
    rng = np.random.default_rng(1)
    # Two clusters of vectors, around entries 2 and 5 of the codebook.
    vectors = np.concatenate([codebook[2] + 0.05 * rng.normal(size=(20, 3)),
                              codebook[5] + 0.05 * rng.normal(size=(10, 3))]).astype(np.float32)
    indices = nearest_codes(tf.constant(vectors), quantizer.codebook)
    assert set(indices.numpy()) == {2, 5}
    for _ in range(1500):  # 0.99^1500 ≈ 3e-7: the averages have forgotten their zero start
        quantizer.update(tf.constant(vectors), indices)
    updated = quantizer.codebook.numpy()
    np.testing.assert_allclose(updated[2], vectors[:20].mean(0), atol=1e-4)
    np.testing.assert_allclose(updated[5], vectors[20:].mean(0), atol=1e-4)
    unused = [k for k in range(8) if k not in (2, 5)]
    np.testing.assert_array_equal(updated[unused], codebook[unused])


@pytest.mark.parametrize("ema", [False, True])
def test_restarts_move_only_unused_entries_onto_encoder_outputs(ema):
    quantizer = VectorQuantizer(6, 2, ema=ema, restart=True)
    quantizer.usage.assign([1.0, 1.0, 1.0, 0.0, 1.0, 0.01])  # entries 3 and 5 have gone unused
    before = quantizer.codebook.numpy()
    vectors = tf.constant(np.random.default_rng(2).normal(size=(40, 2)).astype(np.float32))
    indices = tf.constant([0, 1, 2, 4] * 10)  # the live entries are the ones this batch uses
    quantizer.update(vectors, indices, seed=tf.constant([1, 2]))
    after = quantizer.codebook.numpy()
    moved = np.abs(after - before).max(axis=1) > 0
    if not ema:  # the EMA codebook also moves the used entries, towards their means
        np.testing.assert_array_equal(moved, [False, False, False, True, False, True])
    for k in (3, 5):  # each restarted entry sits on one of the batch's vectors
        assert np.min(np.abs(vectors.numpy() - after[k]).max(axis=1)) < 1e-6
    assert quantizer.usage.numpy()[3] == 1.0 and quantizer.usage.numpy()[5] == 1.0
    if ema:  # the statistics restart as one vector there, so the codebook stays put on the next step
        np.testing.assert_allclose(quantizer.ema_counts.numpy()[[3, 5]], 1.0)
        np.testing.assert_allclose(quantizer.ema_sums.numpy()[[3, 5]], after[[3, 5]])


def test_restarts_lift_codebook_usage_on_a_spread_of_vectors():
    # Vectors far from the initial codebook: without restarts one entry takes them all.
    rng = np.random.default_rng(3)
    vectors = tf.constant((5 + rng.normal(size=(256, 2))).astype(np.float32))
    usage = {}
    keras.utils.set_random_seed(3)  # the same initial codebook whatever ran before
    for restart in (False, True):
        quantizer = VectorQuantizer(16, 2, ema=True, restart=restart)
        for step in range(50):
            quantizer(vectors, training=True, seed=tf.constant([step, 0]))
        usage[restart] = int(used_codes(quantizer(vectors)["indices"]))
    assert usage[False] <= 2 and usage[True] >= 14


def test_fsq_rounds_to_its_levels_with_a_straight_through_gradient():
    quantizer = FiniteScalarQuantizer((8, 5, 3), standardize=False)
    assert quantizer.num_codes == 120 and quantizer.codebook_dim == 3
    z = tf.constant(np.random.default_rng(4).normal(scale=3, size=(500, 3)).astype(np.float32))
    out = quantizer(z)
    q = out["quantized"].numpy()
    for d, levels in enumerate((8, 5, 3)):  # each number takes exactly L values, evenly spaced in [−1, 1]
        half = levels // 2
        assert set(np.round(q[:, d] * half).astype(int)) == set(range(-half, levels - half))
    bounded = fsq_bound(z, (8, 5, 3)).numpy()
    np.testing.assert_allclose(q * np.array([4, 2, 1]), np.round(bounded))  # rounding the bounded numbers
    assert set(out["indices"].numpy()) <= set(range(120)) and len(set(out["indices"].numpy())) > 60
    np.testing.assert_allclose(quantizer.lookup(out["indices"]), q)  # index <-> vector round trip
    np.testing.assert_allclose(quantizer.lookup(tf.range(120)).numpy().shape, (120, 3))
    assert len({tuple(v) for v in quantizer.lookup(tf.range(120)).numpy()}) == 120  # all codes distinct
    np.testing.assert_array_equal(out["loss"], 0.0)
    with tf.GradientTape() as tape:  # the gradient of rounding is the identity: that of the bound remains
        tape.watch(z)
        through = quantizer(z)["quantized"] * np.array([4, 2, 1], np.float32)
    with tf.GradientTape() as bound_tape:
        bound_tape.watch(z)
        smooth = fsq_bound(z, (8, 5, 3))
    np.testing.assert_allclose(tape.gradient(through, z), bound_tape.gradient(smooth, z), rtol=1e-5, atol=1e-7)


def test_fsq_standardizes_its_numbers_so_a_small_encoder_output_still_spreads_over_the_codes():
    """An untrained encoder's outputs are far below one rounding step: unstandardized they all round to one
    code; standardized with the batch's statistics they use most codes, and once the moving statistics
    have followed a fixed distribution, inference rounds as training does."""
    rng = np.random.default_rng(5)
    z = tf.constant((0.01 * rng.normal(size=(64, 4, 4, 3)) + 0.2).astype(np.float32))  # a scale and an offset
    plain = FiniteScalarQuantizer((8, 8, 8), standardize=False)
    assert int(used_codes(plain(z, training=True)["indices"])) == 1
    quantizer = FiniteScalarQuantizer((8, 8, 8))
    out = quantizer(z, training=True)
    assert int(used_codes(out["indices"])) > 100
    mean, variance = tf.nn.moments(z, axes=(0, 1, 2))
    standardized = (z - mean) / tf.sqrt(variance + 1e-6)  # with BatchNormalization's epsilon
    # The rounding of the standardized numbers (up to float error at the half-way points).
    assert np.abs(out["quantized"] * 4 - fsq_bound(standardized, (8, 8, 8))).max() <= 0.5 + 1e-3
    for _ in range(1500):  # 0.99^1500 < 3e-7, far below the batch's variance of 1e-4: the moving statistics are its
        quantizer(z, training=True)
    agree = np.mean(quantizer(z)["indices"].numpy() == quantizer(z, training=True)["indices"].numpy())
    assert agree > 0.95
    with tf.GradientTape() as tape:  # the gradient still reaches the encoder's numbers
        tape.watch(z)
        total = tf.reduce_sum(quantizer(z, training=True)["quantized"] * tf.range(1.0, 4.0))
    assert float(tf.reduce_max(tf.abs(tape.gradient(total, z)))) > 0


def test_fsq_levels_are_parsed_and_refused_with_a_message():
    assert parse_levels("8,5,5,5") == (8, 5, 5, 5)
    for bad in ("", "8,1", "a,b", "8;5"):
        with pytest.raises(ValueError, match="--fsq-levels must be comma-separated integers ≥ 2"):
            parse_levels(bad)
    from keras_vae.config import FitConfig

    with pytest.raises(UserError, match="--fsq-levels must be comma-separated"):
        FitConfig(model="vq_vae", quantizer="fsq", fsq_levels="8,x")
