"""The gated PixelCNN prior: exact causality, no blind spot, conditioning, likelihood, sampling and saving."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vae import pixelcnn

CODES = 5
GRID = (5, 6)
LAYERS = 4  # max(h − 3, w − 2): the last position's receptive field just covers a 5×6 grid


def random_network(grid=GRID, num_layers=LAYERS, **kwargs):
    """A randomly initialised network whose embeddings have unit scale (Keras' default ±0.05 makes far
    positions' influence tiny, down to 1e-6, though never zero)."""
    keras.utils.set_random_seed(0)
    network = pixelcnn.build_pixelcnn(grid, CODES, filters=16, num_layers=num_layers, **kwargs)
    for layer in network.layers:
        if isinstance(layer, keras.layers.Embedding):
            layer.embeddings.assign(np.random.default_rng(1).normal(size=layer.embeddings.shape))
    return network


def one_change_each(codes, num_codes):
    """[1 + n, ...]: the code map [...] with n positions, then n copies with one position changed (raster order)."""
    flat = codes.reshape(-1)
    batch = np.repeat(flat[None], flat.size + 1, axis=0)
    batch[1 + np.arange(flat.size), np.arange(flat.size)] = (flat + 1) % num_codes
    return batch.reshape(-1, *codes.shape)


def influence(outputs):
    """[n changed, n read]: max |change| of the output at each position when one input position changes,
    for outputs [1 + n, h, w, C] of `one_change_each`'s batch."""
    outputs = np.asarray(outputs)
    changes = np.abs(outputs[1:] - outputs[:1]).max(axis=-1)  # (n, h, w)
    return changes.reshape(len(changes), -1)


@pytest.fixture(scope="module")
def influences():
    network = random_network()
    codes = np.random.default_rng(0).integers(0, CODES, GRID).astype(np.int32)
    batch = one_change_each(codes, CODES)
    outputs = dict(pixelcnn.streams(network)(batch), logits=network(batch))
    return {name: influence(value) for name, value in outputs.items()}


# ------------------------------------------------------------------ causality and receptive field
def raster_order_allows(num_positions):
    """[changed, read]: True where the read position comes strictly after the changed one."""
    return np.triu(np.ones((num_positions, num_positions), bool), k=1)


def test_the_logits_read_exactly_the_earlier_positions(influences):
    change = influences["logits"]
    allowed = raster_order_allows(len(change))
    assert np.all(change[~allowed] == 0)  # bit-exact: the current and later positions are never read
    # and every earlier one is: no blind spot (the top-left corner reaches the last position by one
    # thin path, ~5e-5, far above float32 rounding; and what is not read stays bit-exact)
    assert change[allowed].min() > 1e-6


def test_the_vertical_stream_reads_only_the_rows_above(influences):
    rows = np.arange(GRID[0] * GRID[1]) // GRID[1]
    above_or_same = rows[None, :] <= rows[:, None]  # [changed, read]: the read row is not below the changed one
    names = [name for name in influences if name.startswith("vertical_")]
    assert len(names) == LAYERS  # v₀..v_{L-1}: the last layer's v feeds nothing and Keras leaves it out
    for name in names:
        assert np.all(influences[name][above_or_same] == 0), name
        assert influences[name][~above_or_same].max() > 0, name


def test_the_horizontal_stream_reads_only_the_earlier_positions(influences):
    names = [name for name in influences if name.startswith("horizontal_")]
    assert len(names) == LAYERS + 1
    allowed = raster_order_allows(GRID[0] * GRID[1])
    for name in names:
        assert np.all(influences[name][~allowed] == 0), name
    assert influences[f"horizontal_{LAYERS}"][allowed].min() > 0  # the last layer's h reads every earlier one


def test_fewer_layers_shrink_the_receptive_field_but_keep_causality():
    network = random_network(num_layers=LAYERS - 1)
    codes = np.zeros(GRID, np.int32)
    change = influence(network(one_change_each(codes, CODES)))
    allowed = raster_order_allows(len(change))
    assert np.all(change[~allowed] == 0)
    assert change[0, -1] == 0  # the top-left corner is out of the last position's reach
    assert np.mean(change[allowed] > 0) > 0.9


@pytest.mark.parametrize("grid", [(4, 4), (3, 8), (7, 4), (8, 10)])
def test_the_covering_depth_is_the_fewest_layers_without_a_blind_spot(grid):
    depth = pixelcnn.covering_depth(grid)
    codes = np.random.default_rng(3).integers(0, CODES, grid).astype(np.int32)
    for layers, covered in ((depth, True), (depth - 1, False)):
        if layers == 0:
            continue
        change = influence(random_network(grid=grid, num_layers=layers)(one_change_each(codes, CODES)))
        earlier = change[:-1, -1]  # what each earlier position does to the last position's logits
        assert bool(np.all(earlier > 1e-7)) == covered, (grid, layers)


# ------------------------------------------------------------------------------ the condition
def test_the_condition_changes_the_logits_of_its_block_and_causality_holds():
    network = random_network(grid=(4, 6), num_layers=2, condition_grid=(2, 3), condition_codes=3)
    rng = np.random.default_rng(2)
    codes = rng.integers(0, CODES, (4, 6)).astype(np.int32)
    condition = rng.integers(0, 3, (2, 3)).astype(np.int32)
    conditions = one_change_each(condition, 3)  # (7, 2, 3)
    logits = network([np.repeat(codes[None], len(conditions), 0), conditions]).numpy()
    change = influence(logits).reshape(6, 4, 6)  # (changed condition position, h, w)
    for position in range(6):
        row, column = divmod(position, 3)
        block = change[position, 2 * row: 2 * row + 2, 2 * column: 2 * column + 2]
        assert block.min() > 1e-4, position  # every code above the changed condition code notices it
    batch = one_change_each(codes, CODES)
    change = influence(network([batch, np.repeat(condition[None], len(batch), 0)]))
    assert np.all(change[~raster_order_allows(len(change))] == 0)


@pytest.mark.parametrize("grid, condition_grid", [((4, 4), (3, 3)), ((4, 6), (2, 2)), ((2, 2), (4, 4))])
def test_a_condition_grid_that_does_not_divide_the_grid_is_refused(grid, condition_grid):
    with pytest.raises(ValueError, match=r"condition grid times one integer f.*Received: grid_shape"):
        pixelcnn.build_pixelcnn(grid, CODES, condition_grid=condition_grid, condition_codes=3)


@pytest.mark.parametrize("arguments, message", [
    (dict(condition_grid=(2, 2)), "Received: condition_grid=\\(2, 2\\), condition_codes=None"),
    (dict(kernel_size=2), "Received: kernel_size=2"),
    (dict(num_layers=0), "Received: num_layers=0"),
])
def test_bad_arguments_are_refused_with_the_bad_value(arguments, message):
    with pytest.raises(ValueError, match=message):
        pixelcnn.build_pixelcnn((4, 4), CODES, **arguments)


# ----------------------------------------------------------------------------- the likelihood
def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("conditional", [False, True])
def test_code_log_prob_sums_the_log_softmax_at_the_true_codes(conditional):
    kwargs = dict(condition_grid=(1, 2), condition_codes=3) if conditional else {}
    network = random_network(grid=(3, 6), num_layers=2, **kwargs)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, CODES, (4, 3, 6)).astype(np.int32)
    condition = rng.integers(0, 3, (4, 1, 2)).astype(np.int32) if conditional else None
    logits = network(pixelcnn.network_inputs(codes, condition)).numpy().astype(np.float64)
    at_codes = np.take_along_axis(log_softmax(logits), codes[..., None], axis=-1)[..., 0]  # (B, h, w)
    expected = at_codes.sum(axis=(1, 2))
    np.testing.assert_allclose(pixelcnn.code_log_prob(network, codes, condition).numpy(), expected, rtol=1e-5)


def test_logits_are_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        network = pixelcnn.build_pixelcnn((2, 3), CODES, filters=8, num_layers=1)
    finally:
        keras.config.set_dtype_policy(previous)
    codes = np.zeros((2, 2, 3), np.int32)
    assert network(codes).dtype == "float32"
    assert pixelcnn.code_log_prob(network, codes).dtype == tf.float32


# --------------------------------------------------------------------------------- sampling
def test_sampling_is_stateless_in_its_seed():
    network = random_network(grid=(3, 4), num_layers=2)
    draw = lambda seed: pixelcnn.sample_codes(network, 6, (3, 4), tf.constant(seed)).numpy()  # noqa: E731
    first = draw([1, 2])
    assert first.shape == (6, 3, 4) and first.dtype == np.int32
    assert first.min() >= 0 and first.max() < CODES
    np.testing.assert_array_equal(first, draw([1, 2]))
    assert np.any(first != draw([1, 3]))


def test_sampling_draws_a_code_that_dominates_the_logits_and_temperature_sharpens():
    network = random_network(grid=(3, 4), num_layers=2)
    last = network.get_layer("logits")
    last.kernel.assign(np.zeros(last.kernel.shape))
    last.bias.assign([0.0, 0.0, 30.0, 0.0, 0.0])
    assert np.all(pixelcnn.sample_codes(network, 20, (3, 4), tf.constant([0, 1])).numpy() == 2)
    last.bias.assign([0.0, 1.0, 0.0, 0.0, 0.0])
    seed = tf.constant([0, 1])
    assert len(np.unique(pixelcnn.sample_codes(network, 20, (3, 4), seed))) == CODES
    assert np.all(pixelcnn.sample_codes(network, 20, (3, 4), seed, temperature=0.02).numpy() == 1)


def count_ops(concrete_function, op):
    """How often `op` appears in a traced function, the bodies of its loops and branches included."""
    graph = concrete_function.graph.as_graph_def()
    nodes = [*graph.node, *(node for function in graph.library.function for node in function.node_def)]
    return sum(node.op == op for node in nodes)


def test_a_traced_sampler_holds_one_network_and_draws_what_eager_draws():
    network = random_network(grid=(3, 4), num_layers=2, condition_grid=(3, 4), condition_codes=3)  # f = 1
    condition = np.random.default_rng(4).integers(0, 3, (7, 3, 4)).astype(np.int32)

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int32),
                                  tf.TensorSpec([None, 3, 4], tf.int32), tf.TensorSpec([], tf.bool)])
    def sample(num_samples, seed, condition, from_prior):
        return tf.cond(from_prior,
                       lambda: pixelcnn.sample_codes(network, num_samples, (3, 4), seed, 0.8, condition),
                       lambda: tf.zeros([num_samples, 3, 4], tf.int32))

    seed = tf.constant([5, 6])
    traced = sample(tf.constant(7), seed, condition, tf.constant(True)).numpy()
    eager = pixelcnn.sample_codes(network, 7, (3, 4), seed, 0.8, condition).numpy()
    np.testing.assert_array_equal(traced, eager)
    forward = tf.function(network).get_concrete_function(
        [tf.TensorSpec([None, 3, 4], tf.int32), tf.TensorSpec([None, 3, 4], tf.int32)])
    assert count_ops(sample.get_concrete_function(), "Conv2D") == count_ops(forward, "Conv2D")


# ------------------------------------------------------------------------------ a fitted prior
def fit(network, inputs, codes):
    """256 Adam steps. The maps repeat in order and batches are not shuffled, so every batch holds each map
    equally often: its gradient is the whole set's, and the fitted probabilities do not wander with the
    batch mix (shuffled, one seed in six ended 0.3 nats off)."""
    network.compile(optimizer=keras.optimizers.Adam(1e-2),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    network.fit(inputs, codes, epochs=8, batch_size=32, shuffle=False, verbose=0)


def test_a_fitted_prior_puts_its_mass_on_the_training_maps_and_samples_them():
    rng = np.random.default_rng(5)
    maps = rng.integers(0, 4, (4, 3, 3)).astype(np.int32)  # four distinct 3×3 maps, a quarter each
    assert len(np.unique(maps.reshape(4, -1), axis=0)) == 4
    keras.utils.set_random_seed(0)
    network = pixelcnn.build_pixelcnn((3, 3), 4, filters=16, num_layers=2)
    codes = maps[np.arange(1024) % 4]
    fit(network, codes, codes)
    log_prob = pixelcnn.code_log_prob(network, maps).numpy()
    assert np.all(log_prob > math.log(1 / 4) - 0.3), log_prob
    drawn = pixelcnn.sample_codes(network, 200, (3, 3), tf.constant([7, 8])).numpy()
    which = np.all(drawn[:, None] == maps[None], axis=(2, 3))  # (200, 4)
    assert which.any(axis=1).mean() > 0.9
    assert np.all(which.mean(axis=0) > 0.1)  # each map is drawn


def test_a_fitted_conditional_prior_is_sure_of_codes_determined_by_the_condition():
    rng = np.random.default_rng(6)
    conditions = rng.integers(0, 3, (4, 2, 2)).astype(np.int32)
    # The bottom code is the top code above it shifted by a checkerboard: a function of the condition.
    checkerboard = np.indices((4, 4)).sum(axis=0) % 2
    maps = (np.repeat(np.repeat(conditions, 2, axis=1), 2, axis=2) + checkerboard) % 4  # (4, 4, 4)
    assert len(np.unique(maps.reshape(4, -1), axis=0)) == 4  # without the condition: log p ≤ log(1/4) on average
    keras.utils.set_random_seed(0)
    network = pixelcnn.build_pixelcnn((4, 4), 4, filters=16, num_layers=2, condition_grid=(2, 2), condition_codes=3)
    index = np.arange(1024) % 4
    fit(network, [maps[index], conditions[index]], maps[index])
    log_prob = pixelcnn.code_log_prob(network, maps, conditions).numpy()
    assert np.all(log_prob > -0.3), log_prob


# ---------------------------------------------------------------------------------- saving
@pytest.mark.parametrize("conditional", [False, True])
def test_the_keras_format_round_trip_keeps_the_logits(tmp_path, conditional):
    kwargs = dict(condition_grid=(1, 2), condition_codes=3) if conditional else {}
    network = random_network(grid=(2, 4), num_layers=2, **kwargs)
    rng = np.random.default_rng(7)
    inputs = pixelcnn.network_inputs(rng.integers(0, CODES, (3, 2, 4)).astype(np.int32),
                                     rng.integers(0, 3, (3, 1, 2)).astype(np.int32) if conditional else None)
    path = tmp_path / "prior.keras"
    keras.saving.save_model(network, path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(inputs).numpy(), network(inputs).numpy())


def test_a_row_of_codes_along_time_gets_a_causal_prior_that_reads_its_stated_context():
    """A code row [1, w] (speech codes along time): kernel 7, 3·layers + 1 codes back, at most 12 layers (37
    codes). Shown with 3 layers: position i reads exactly codes i - 10 .. i - 1."""
    from keras_vae.models.vq import prior_shape

    assert prior_shape((1, 48)) == (7, 12) and prior_shape((1, 10)) == (7, 3) and prior_shape((4, 4)) == (3, 4)
    grid = (1, 16)
    network = random_network(grid=grid, num_layers=3, kernel_size=7)
    codes = np.random.default_rng(4).integers(0, CODES, grid).astype(np.int32)
    change = influence(network(one_change_each(codes, CODES)))  # [changed, read]
    changed, read = np.indices(change.shape)
    noise = 1e-6  # float rounding of the batched convolutions; a real influence is orders above it
    assert np.all(change[read <= changed] < noise)  # causal
    assert np.all(change[(read > changed) & (read - changed <= 10)] > 1e-4)
    assert np.all(change[read - changed > 10] < noise)
