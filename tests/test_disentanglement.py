"""The disentanglement metrics: their maximum on the factors themselves, chance on noise, and their helpers."""

import itertools

import numpy as np
import pytest

from keras_vae import disentanglement
from keras_vae.disentanglement import METRICS, FactorGrid

# The two mixed factors have the same size, so a mixed code cannot tell them apart by scale.
GRID = FactorGrid((3, 6, 10, 8, 8))
CHANCE = float(np.mean([1 / n for n in GRID.factor_sizes]))  # mean over factors of 1 / size
SMALL = {  # protocol sizes shrunk from disentanglement_lib's so the file runs in seconds
    "beta_vae": dict(num_train=1000, num_eval=500),
    "factor_vae": dict(num_train=1000, num_eval=500, num_variance_estimate=2000),
    "mig": dict(num_train=3000),
    "sap": dict(num_train=3000, num_test=1500),
    "dci": dict(num_train=3000, num_test=1500),
    "modularity_explicitness": dict(num_train=3000, num_test=1500),
}


def identity(x):
    return x


def mixed(x):
    """Factors 3 and 4 only as their sum and difference, the others as they are."""
    z = np.array(x, np.float64)
    z[:, 3], z[:, 4] = x[:, 3] + x[:, 4], x[:, 3] - x[:, 4]
    return z


class Noise:
    """Codes drawn independently of the observations."""

    def __init__(self, seed=0, dims=5):
        self.rng, self.dims = np.random.default_rng(seed), dims

    def __call__(self, x):
        return self.rng.normal(size=(len(x), self.dims))


def score(name, representation, seed=0, **overrides):
    return METRICS[name](GRID, representation, np.random.default_rng(seed), **{**SMALL[name], **overrides})


# (metric, key, lower bound on the factors themselves). Bounds below 1 are
# estimator limits, not slack: SAP's runner-up dimension predicts at chance,
# so a perfect code scores mean_k (1 − 1/size_k) ≈ 0.83 here.
MAXIMUM = [
    ("beta_vae", "eval_accuracy", 0.99),
    ("factor_vae", "eval_accuracy", 1.0),
    ("mig", "discrete_mig", 0.95),  # binning bias of the runner-up's MI
    ("sap", "sap_score", 0.75),
    ("dci", "disentanglement", 0.999),
    ("dci", "completeness", 0.999),
    ("dci", "informativeness_test", 0.999),
    ("modularity_explicitness", "modularity_score", 0.99),
    ("modularity_explicitness", "explicitness_score_test", 0.99),
]


@pytest.mark.parametrize("name, key, bound", MAXIMUM)
def test_the_factors_themselves_score_the_maximum(name, key, bound):
    assert score(name, identity)[key] >= bound


# (metric, key, value on codes independent of the factors, tolerance).
CHANCE_LEVEL = [
    ("beta_vae", "eval_accuracy", 1 / 5, 0.07),
    ("factor_vae", "eval_accuracy", 1 / 5, 0.07),
    ("mig", "discrete_mig", 0.0, 0.02),
    ("sap", "sap_score", 0.0, 0.03),
    ("dci", "disentanglement", 0.0, 0.1),
    ("dci", "informativeness_test", CHANCE, 0.03),
    ("modularity_explicitness", "explicitness_score_test", 0.5, 0.03),
]


@pytest.mark.parametrize("name, key, chance, tolerance", CHANCE_LEVEL)
def test_noise_scores_chance(name, key, chance, tolerance):
    assert abs(score(name, Noise())[key] - chance) <= tolerance


# Mixing factors 3 and 4 into two dimensions must cost these. Not listed, as
# they are not sensitive to it: DCI informativeness (a tree still reads both
# factors off the sum and difference) and explicitness (a linear model undoes
# any invertible linear mix).
SENSITIVE_TO_MIXING = [
    ("beta_vae", "eval_accuracy"),  # labels 3 and 4 give identically distributed points
    ("factor_vae", "eval_accuracy"),
    ("mig", "discrete_mig"),
    ("sap", "sap_score"),
    ("dci", "disentanglement"),
    ("dci", "completeness"),
    ("modularity_explicitness", "modularity_score"),
]


@pytest.mark.parametrize("name, key", SENSITIVE_TO_MIXING)
def test_a_code_mixing_two_factors_scores_below_one_separating_them(name, key):
    assert score(name, mixed)[key] < score(name, identity)[key] - 0.05


def test_mixing_does_not_cost_informativeness_or_explicitness():
    assert score("dci", mixed)["informativeness_test"] > 0.95
    assert score("modularity_explicitness", mixed)["explicitness_score_test"] > 0.95


def test_a_non_monotonic_encoding_of_each_factor_still_scores_the_maximum_on_dci_and_sap():
    # Each factor through a shuffled lookup table: no threshold on z separates its values in order.
    tables = [np.random.default_rng(k).permutation(n) * 1.7 for k, n in enumerate(GRID.factor_sizes)]

    def shuffled(x):
        return np.stack([tables[k][x[:, k].astype(int)] for k in range(x.shape[1])], axis=1)

    result = score("dci", shuffled)
    assert min(result["disentanglement"], result["completeness"], result["informativeness_test"]) > 0.999
    assert score("sap", shuffled)["sap_score"] >= 0.75


@pytest.mark.parametrize("name", sorted(METRICS))
def test_a_metric_is_a_function_of_its_rng(name):
    assert score(name, identity, seed=3) == score(name, identity, seed=3)
    assert score(name, Noise(1), seed=3) == score(name, Noise(1), seed=3)


@pytest.mark.parametrize("name", ["mig", "sap", "dci", "modularity_explicitness"])
def test_the_representation_sees_batches_and_their_size_does_not_change_the_score(name):
    sizes = []

    def recording(x):
        sizes.append(len(x))
        return x

    small_batches = score(name, recording, batch_size=7)
    assert max(sizes) == 7
    assert small_batches == score(name, identity)


def test_beta_vae_and_factor_vae_call_the_representation_on_one_batch_at_a_time():
    sizes = []

    def recording(x):
        sizes.append(len(x))
        return x

    score("beta_vae", recording, batch_size=16, num_train=20, num_eval=10)
    score("factor_vae", recording, batch_size=16, num_train=20, num_eval=10, num_variance_estimate=100)
    assert set(sizes) == {16, 100 % 16}


def test_factor_vae_leaves_out_collapsed_dimensions():
    def with_dead(x):  # the factors, then two constants and a dimension of tiny variance
        n = len(x)
        return np.hstack([x, np.full((n, 2), 0.3), 0.01 * np.sin(np.arange(n))[:, None]])

    result = score("factor_vae", with_dead)
    assert result["num_active_dims"] == 5 and result["eval_accuracy"] == 1.0
    # The threshold is on the standard deviation (0.05), not the variance: a spread of 0.1 is alive, 0.01 is not.
    assert score("factor_vae", lambda x: 0.1 * Noise()(x))["num_active_dims"] > 0
    dead = score("factor_vae", lambda x: 0.01 * Noise()(x))
    assert dead == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}


def test_roc_auc_equals_a_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(0)
    scores, positives = rng.integers(0, 5, 300).astype(float), rng.random(300) < 0.3
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0)
             for p, q in itertools.product(scores[positives], scores[~positives])]
    assert disentanglement.roc_auc(scores, positives) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert disentanglement.roc_auc([3.0, 2.0, 1.0], [True, False, False]) == 1.0
    assert disentanglement.roc_auc(np.ones(4), [True, False, True, False]) == 0.5
    assert np.isnan(disentanglement.roc_auc([1.0, 2.0], [True, True]))


def test_softmax_regression_separates_separable_classes_and_reaches_the_optimum():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    centres = np.array([[0.0, 3.0], [3.0, 0.0], [-3.0, -3.0]])
    separable = centres[labels] + rng.normal(0, 0.5, (600, 2))
    theta = disentanglement._fit_softmax_regression(separable, labels, 3)
    assert disentanglement._softmax_accuracy(theta, separable, labels) == 1.0
    # On overlapping classes the loss gradient (with its L2 term) vanishes at the returned θ.
    overlapping = centres[labels] / 3 + rng.normal(0, 1.0, (600, 2))
    theta = disentanglement._fit_softmax_regression(overlapping, labels, 3, l2=1e-3)
    x, targets = np.hstack([overlapping, np.ones((600, 1))]), np.eye(3)[labels]
    gradient = x.T @ (disentanglement._class_probabilities(theta, overlapping) - targets) / 600 + 1e-3 * theta
    assert np.max(np.abs(gradient)) < 1e-6


def test_the_tree_finds_a_middle_interval_and_credits_only_that_feature():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (500, 3))
    labels = (np.abs(x[:, 1]) < 0.4).astype(int)  # a band: no single threshold separates it
    tree = disentanglement._fit_tree(x, labels, 2, max_depth=4, min_leaf=5)
    assert np.mean(disentanglement._tree_predict(tree, x) == labels) == 1.0
    assert tree.importances[1] > 0 and tree.importances[0] == tree.importances[2] == 0


def test_the_tree_halves_evenly_spread_values_so_forty_take_six_levels():
    # With Gini every split between whole values would tie and a tie-break would peel one per level.
    labels = np.random.default_rng(0).integers(0, 40, 4000)
    tree = disentanglement._fit_tree(labels[:, None].astype(float), labels, 40, max_depth=6, min_leaf=5)
    assert np.mean(disentanglement._tree_predict(tree, labels[:, None]) == labels) == 1.0


def test_modularity_of_a_hand_made_mutual_information_matrix():
    mutual_information = [[0.8, 0.2, 0.0],  # 1 − 0.2² / (0.8² · 2) = 0.96875
                          [0.3, 0.3, 0.3],  # 1 − (2 · 0.09) / (0.09 · 2) = 0
                          [0.0, 0.0, 0.0]]  # no information: 0, still counted
    assert disentanglement.modularity(mutual_information) == pytest.approx(0.96875 / 3)
    assert disentanglement.modularity(np.eye(4)) == 1.0


def test_disentanglement_and_completeness_of_hand_made_importances():
    assert disentanglement.disentanglement_completeness(np.eye(3)) == (1.0, 1.0)
    assert disentanglement.disentanglement_completeness(np.ones((3, 3))) == pytest.approx((0.0, 0.0))
    assert disentanglement.disentanglement_completeness(np.zeros((3, 3))) == (0.0, 0.0)
    # Rows: (1/2, 1/2) is 0 and (0, 1) is 1, each weighing 2/4. Columns: (1, 0) is 1 with weight
    # 1/4; (1/3, 2/3) is 1 − H₂(1/3) with weight 3/4.
    h = -(np.log2(1 / 3) / 3 + 2 * np.log2(2 / 3) / 3)
    assert disentanglement.disentanglement_completeness([[1.0, 1.0], [0.0, 2.0]]) == pytest.approx(
        (0.5, 0.25 + 0.75 * (1 - h)))


def test_bad_sizes_and_grids_are_refused_naming_the_value():
    with pytest.raises(ValueError, match="num_train=0"):
        score("mig", identity, num_train=0)
    with pytest.raises(ValueError, match="batch_size=1"):
        score("factor_vae", identity, batch_size=1)
    with pytest.raises(ValueError, match=r"factor_sizes=\(3, 0\)"):
        FactorGrid((3, 0))


def test_the_factor_grid_samples_every_value_and_observes_the_factors():
    factors = GRID.sample_factors(2000, np.random.default_rng(0))
    assert factors.shape == (2000, 5)
    assert [len(np.unique(factors[:, k])) for k in range(5)] == list(GRID.factor_sizes)
    np.testing.assert_array_equal(GRID.observations(factors), factors.astype(float))
