"""The sample judge: its scores on hand-made decisions, its blur, and a small trained judge on real and
broken sprites."""

import numpy as np
import pytest

from keras_vae import judge
from keras_vae.data import sprites


def test_a_shape_counts_only_when_the_judge_is_confident_of_it():
    probs = np.array([
        [0.95, 0.03, 0.01, 0.01],  # confident square
        [0.10, 0.85, 0.04, 0.01],  # an ellipse, not confidently
        [0.00, 0.00, 0.05, 0.95],  # confidently not a sprite
        [0.01, 0.01, 0.98, 0.00],  # confident heart
        [0.05, 0.05, 0.00, 0.90],  # not a sprite at the threshold
    ])
    assert judge.shape_decisions(probs).tolist() == [0, -1, -1, 2, -1]
    assert judge.shape_decisions(probs, threshold=0.8).tolist() == [0, 1, -1, 2, -1]


def test_sample_scores_are_the_confident_fraction_and_each_shapes_share_of_it():
    scores = judge.score_decisions([0, 0, 1, 2, -1, -1, 0, 1])
    assert scores == {"confident": 0.75, "square": 0.5, "ellipse": pytest.approx(2 / 6), "heart": pytest.approx(1 / 6)}
    assert judge.score_decisions([-1, -1]) == {"confident": 0.0, "square": None, "ellipse": None, "heart": None}


def test_factor_agreement_tolerances():
    factors = np.array([[0, 2, 7, 10, 10], [1, 2, 0, 10, 10], [2, 5, 0, 0, 31], [0, 0, 0, 5, 5]])
    predicted = {
        "shape": np.array([0, 1, 1, 0]),    # the third is wrong
        "scale": np.array([3, 1, 3, 0]),    # within 1, within 1, off by 2, exact
        "x": np.array([12, 8, 0, 5]),       # within 2, within 2, exact, exact
        "y": np.array([10, 10, 28, 5]),     # the third is 3 off
    }
    assert judge.factor_agreement(predicted, factors) == {"shape": 0.75, "scale": 0.75, "position": 0.75}


def test_gaussian_blur_keeps_the_mass_and_spreads_a_point_as_a_gaussian():
    image = np.zeros((2, 21, 21, 1), np.float32)
    image[:, 10, 10] = 1.0
    blurred = judge.gaussian_blur(image, [1.5, 0.0])
    assert blurred[0].sum() == pytest.approx(1.0, abs=1e-5)
    profile = np.exp(-0.5 * (np.arange(-3, 4) / 1.5) ** 2)
    profile /= np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2).sum()  # the kernel's own normalization (radius 5)
    np.testing.assert_allclose(blurred[0, 10, 7:14, 0], profile * profile[3], rtol=1e-5)
    np.testing.assert_allclose(blurred[1], image[1], atol=1e-6)  # sigma 0: unchanged


def test_reject_images_are_faint_or_blurred():
    images = judge.reject_images(60, np.random.default_rng(0))
    assert images.shape == (60, 64, 64, 1) and images.min() >= 0 and images.max() <= 1
    peak = images.reshape(60, -1).max(axis=1)
    assert (peak <= 0.25).any() and (peak > 0.25).any()  # faint ones and blurred ones
    assert (images > 0.05).reshape(60, -1).sum(axis=1).max() > 400  # a blur spreads a shape wide


@pytest.fixture(scope="module")
def small_judge():
    """A judge trained on a small recipe (the real one is trained once and cached by `load_judge`)."""
    recipe = dict(judge.RECIPE, num_train=4000, num_reject=3000, epochs=4)
    return judge.train_judge(recipe)


def test_a_trained_judge_reads_real_sprites_and_rejects_broken_ones(small_judge):
    x, factors, _, _ = sprites.make_sprites(400, 1, seed=5)
    real = x.astype(np.float32) / 255
    agreement = judge.reconstruction_scores(small_judge, real, factors)
    assert agreement["scale"] > 0.8 and agreement["position"] > 0.8
    assert agreement["shape"] > 0.5  # three shapes: chance is 1/3
    empty = np.zeros((50, 64, 64, 1), np.float32)
    assert judge.sample_scores(small_judge, empty)["confident"] == 0.0

    def rejected(images):
        return float(np.mean(judge.predict(small_judge, images)["shape"].argmax(axis=1) == judge.REJECT))

    assert rejected(real) < 0.1
    assert rejected(empty) > 0.9
    assert rejected(judge.gaussian_blur(real[:100], np.full(100, 4.0))) > 0.8  # soft blobs
    assert rejected(judge.random_blobs(100, np.random.default_rng(7))) > 0.6  # lumps (0.74 when written)


def test_the_judge_refuses_images_of_another_size(small_judge):
    with pytest.raises(ValueError, match=r"reads \[N, 64, 64, 1\] images; received \(2, 28, 28, 1\)"):
        judge.predict(small_judge, np.zeros((2, 28, 28, 1)))


def test_resample_scores_judge_images_that_keep_the_top_groups_and_draw_the_rest():
    """The scores of `keras-vae resample`'s rows: the top k groups of each image's code at their posterior
    means, the rest the ε of one N(0, I) draw at the seed, decoded and judged (by a stand-in judge that
    records what it is shown and is confident of a square exactly when an image is brighter than the median
    of the expected images), with the factors it reads compared with the originals'."""
    import tensorflow as tf

    from conftest import config_for
    from keras_vae.data.splits import Split
    from keras_vae.models import build_model

    model = build_model(config_for("nvae", scales=2, groups_per_scale=1, channels=8, latent_channels=2, seed=1),
                        (64, 64, 1))
    x = np.random.default_rng(0).uniform(size=(40, 64, 64, 1)).astype(np.float32)
    loc = model.encode(x[:30])[0].numpy()
    noise = np.random.default_rng(5).standard_normal(loc.shape)
    top = model.plan.group_sizes()[0]
    expected = model.decode(np.concatenate([loc[:, :top], noise[:, top:]], 1).astype(np.float32)).numpy()
    brightness = expected.mean((1, 2, 3))
    threshold = np.median(brightness)
    shown = []

    def bright_means_square(images, training=False):
        shown.append(np.asarray(images))
        margin = tf.reduce_mean(images, [1, 2, 3]) - threshold
        shape = tf.stack([tf.where(margin > 0, 10.0, -10.0), *[tf.zeros_like(margin)] * 3], -1)
        return {name: shape if name == "shape" else tf.zeros([len(images), size]) for name, size in judge.HEADS}

    factors = np.zeros((40, 5), np.int64)  # every original a small square at the corner: index 0 everywhere
    scores = judge.resample_scores(bright_means_square, model, Split("test", x, factors=factors), num_samples=30,
                                   seed=5)
    assert list(scores) == [1]  # two groups: k = 1 only
    np.testing.assert_allclose(np.concatenate(shown), expected, atol=1e-5)
    confident = scores[1]["confident"]
    assert 0.4 <= confident <= 0.6 and scores[1]["square"] == 1.0 and scores[1]["heart"] == 0.0
    # Read as a square exactly when confident (an ellipse otherwise), so the shape agrees that often; the other
    # heads read index 0 everywhere, as the factors are.
    assert scores[1]["agreement"] == {"shape": pytest.approx(confident), "scale": 1.0, "position": 1.0}
