"""The autoregressive prior over spatial latent maps (`keras_vae.spatial_prior`): a density that integrates to
one, causal in raster order and conditioned on the maps above, and a sampler that draws from the same
conditionals the density reads."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vae import spatial_prior


def networks_for(shapes, components, seed=0, head_scale=0.3):
    """Networks with a random last layer (at the start it is zero, which would make every position ignore the
    others: a causality or conditioning test would pass on a network that reads nothing)."""
    keras.utils.set_random_seed(seed)  # the hidden layers' initial weights, whatever ran before in this worker
    networks = spatial_prior.build_networks(shapes, components, filters=8, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for network in networks:
        head = spatial_prior.head_of(network)
        head.kernel.assign(rng.normal(0.0, head_scale, head.kernel.shape).astype(np.float32))
    return networks


def position_params(networks, shapes, maps, g):
    return spatial_prior.network_params(networks[g], maps, g, shapes[g]).numpy()


@pytest.mark.parametrize("shapes", [[(1, 2, 1)], [(1, 1, 1), (1, 1, 1)]], ids=["two positions", "two maps"])
def test_the_density_of_two_values_integrates_to_one_and_the_second_depends_on_the_first(shapes):
    networks = networks_for(shapes, components=3, head_scale=3.0)
    step = 0.04
    grid = np.arange(-9.0, 9.0, step) + step / 2
    a, b = (v.ravel().astype(np.float32) for v in np.meshgrid(grid, grid, indexing="ij"))
    if len(shapes) == 1:
        maps = [np.stack([a, b], 1).reshape(-1, 1, 2, 1)]
    else:
        maps = [a.reshape(-1, 1, 1, 1), b.reshape(-1, 1, 1, 1)]
    density = np.exp(spatial_prior.log_prob(networks, shapes, 3, [tf.constant(m) for m in maps]).numpy())
    assert abs(density.sum() * step ** 2 - 1.0) < 2e-3
    # The second value's density given the first is not its marginal: the joint is no product of two.
    joint = density.reshape(len(grid), len(grid))
    marginals = np.outer(joint.sum(1), joint.sum(0)) * step ** 2
    assert np.abs(joint - marginals).sum() * step ** 2 > 0.01  # their total variation; 1e-6 for a product


def test_each_position_reads_the_positions_before_it_and_the_maps_above_and_nothing_else():
    shapes = [(2, 2, 2), (4, 4, 2)]
    networks = networks_for(shapes, components=2)
    rng = np.random.default_rng(3)
    maps = [tf.constant(rng.normal(size=(1, *shape)).astype(np.float32)) for shape in shapes]
    before = [position_params(networks, shapes, maps, g).reshape(-1, spatial_prior.parameter_count(2, 2))
              for g in range(2)]
    for position in range(16):  # of the finer map, in raster order
        changed = maps[1].numpy().reshape(16, 2)
        changed[position] += 3.0
        moved = [maps[0], tf.constant(changed.reshape(1, 4, 4, 2))]
        after = position_params(networks, shapes, moved, 1).reshape(16, -1)
        differs = np.abs(after - before[1]).max(1) > 1e-6
        assert not differs[:position + 1].any(), position  # itself and every earlier position unchanged
        assert position == 15 or differs[15], position  # no blind spot: the last position reads every earlier one
    coarse = maps[0].numpy().copy()
    coarse[0, 1, 1] += 3.0  # the coarser map's bottom-right position: every position of the finer map reads it
    after = position_params(networks, shapes, [tf.constant(coarse), maps[1]], 1).reshape(16, -1)
    assert (np.abs(after - before[1]).max(1) > 1e-6).all()


def test_draws_follow_the_conditionals_that_the_density_reads_at_the_temperature_and_keep_given_maps():
    shapes = [(2, 2, 2), (4, 4, 2)]
    components = 3
    networks = networks_for(shapes, components)
    rng = np.random.default_rng(5)
    dims = [int(np.prod(shape)) for shape in shapes]
    noise = 0.6 * rng.standard_normal((6, sum(dims))).astype(np.float32)  # temperature 0.6
    seed = tf.constant([7, 1], tf.int64)
    maps = spatial_prior.draws(networks, shapes, components, noise, seed)
    again = tf.function(lambda n, s: spatial_prior.draws(networks, shapes, components, n, s))(noise, seed)
    for m, n in zip(maps, again):
        np.testing.assert_allclose(n, m, rtol=1e-5, atol=1e-6)  # stateless, traced as eagerly
    offset = 0
    for g, shape in enumerate(shapes):
        mixture = spatial_prior.position_mixture(position_params(networks, shapes, maps, g), shape[2], components)
        normal = mixture.components_distribution.distribution
        loc, scale = normal.loc.numpy(), normal.scale.numpy()  # [6, h, w, M, c], read by teacher forcing
        part = noise[:, offset:offset + dims[g]].reshape(6, shape[0], shape[1], 1, shape[2])
        value = maps[g].numpy()[..., None, :]
        # Each drawn value is one component's loc + scale · noise (one component for all its channels).
        match = np.all(np.abs(loc + scale * part - value) < 1e-4, axis=-1)  # [6, h, w, M]
        assert match.any(-1).all()
        offset += dims[g]
    kept = spatial_prior.draws(networks, shapes, components, noise, tf.constant([8, 1], tf.int64), given=maps[:1])
    np.testing.assert_array_equal(kept[0], maps[0])
    assert np.abs(kept[1].numpy() - maps[1].numpy()).max() > 1e-3  # other components drawn below the kept map


def test_each_component_is_drawn_at_the_weight_that_the_values_above_give_it():
    """A value below a given one: its component's frequency is softmax(π) at that position given the value
    above (the weights move with it), not the weights at another position or at another value."""
    shapes = [(1, 1, 1), (1, 1, 1)]
    networks = networks_for(shapes, components=3, head_scale=3.0)
    noise = np.random.default_rng(2).standard_normal((4000, 2)).astype(np.float32)
    shares = []
    for above in (-1.5, 1.5):
        given = [tf.fill([4000, 1, 1, 1], above)]
        drawn = spatial_prior.draws(networks, shapes, 3, noise, tf.constant([4, 4], tf.int64), given=given)
        mixture = spatial_prior.position_mixture(position_params(networks, shapes, drawn, 1), 1, 3)
        normal = mixture.components_distribution.distribution
        residual = np.abs(normal.loc.numpy() + normal.scale.numpy() * noise[:, 1, None, None, None, None]
                          - drawn[1].numpy()[..., None, :])[:, 0, 0, :, 0]  # [4000, 3]: which component made it
        ordered = np.sort(residual, 1)
        assert np.all(ordered[:, 0] < 1e-4) and np.mean(ordered[:, 1] < 1e-3) < 0.01  # one component, seldom two
        weights = tf.nn.softmax(mixture.mixture_distribution.logits).numpy()[0, 0, 0]
        np.testing.assert_allclose(np.bincount(residual.argmin(1), minlength=3) / 4000, weights, atol=0.03)
        shares.append(weights)
    assert np.abs(shares[0] - shares[1]).max() > 0.1  # the value above moves the weights


def test_under_mixed_precision_the_density_and_the_draws_stay_float32_and_close():
    shapes = [(2, 2, 2), (4, 4, 2)]
    exact = networks_for(shapes, components=2)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = networks_for(shapes, components=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for fast, slow in zip(mixed, exact):
        fast.set_weights(slow.get_weights())
    rng = np.random.default_rng(0)
    maps = [tf.constant(rng.normal(size=(4, *shape)).astype(np.float32)) for shape in shapes]
    log_prob = spatial_prior.log_prob(mixed, shapes, 2, maps)
    assert log_prob.dtype == tf.float32
    reference = spatial_prior.log_prob(exact, shapes, 2, maps).numpy()
    assert np.abs(log_prob.numpy() - reference).max() < 0.03 * np.abs(reference).max()
    noise = rng.standard_normal((4, 40)).astype(np.float32)
    drawn = spatial_prior.draws(mixed, shapes, 2, noise, tf.constant([1, 1], tf.int64))
    assert all(m.dtype == tf.float32 and np.all(np.isfinite(m.numpy())) for m in drawn)


def test_it_starts_as_an_equal_mixture_of_unit_gaussians_near_zero_and_draws_components_at_their_weights():
    shapes = [(1, 1, 2)]
    networks = spatial_prior.build_networks(shapes, 2, filters=8, seed=0)
    head = spatial_prior.head_of(networks[0])
    loc = head.bias.numpy()[2:6].reshape(2, 2)
    assert np.all(np.abs(loc) < 1.5) and np.abs(loc[0] - loc[1]).max() > 1e-3  # spread, so the components differ
    point = np.array([[0.4, -1.2]], np.float32)
    direct = np.log(0.5 * np.exp(-0.5 * ((point - loc) ** 2).sum(1) / (1 + 1e-4) ** 2).sum()) - np.log(2 * np.pi * (1 + 1e-4) ** 2)
    np.testing.assert_allclose(spatial_prior.log_prob(networks, shapes, 2, [point.reshape(1, 1, 1, 2)]), [direct],
                               rtol=1e-5)
    head.bias.assign(np.array([np.log(0.2), np.log(0.8), -4, -4, 4, 4, 0, 0, 0, 0], np.float32))
    noise = 0.1 * np.random.default_rng(0).standard_normal((4000, 2)).astype(np.float32)
    drawn = spatial_prior.draws(networks, shapes, 2, noise, tf.constant([1, 2], tf.int64))[0].numpy().reshape(-1, 2)
    assert np.all(np.sign(drawn[:, 0]) == np.sign(drawn[:, 1]))  # one component for both channels
    assert abs(np.mean(drawn[:, 0] > 0) - 0.8) < 0.03
    np.testing.assert_allclose(drawn - 4.0 * np.sign(drawn), (1 + 1e-4) * noise, atol=1e-5)  # loc + scale · noise
