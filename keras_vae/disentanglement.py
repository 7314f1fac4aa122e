"""The disentanglement metrics of disentanglement_lib, as pure numpy functions.

Every metric takes a ground-truth source and a representation:

- `ground_truth` has `factor_sizes` (e.g. dSprites' (3, 6, 40, 32, 32)),
  `sample_factors(num, rng)` -> int [num, K] and `observations(factors)` ->
  [num, ...] (a dataset's factor images, or `FactorGrid` below);
- `representation` maps observations [n, ...] to codes [n, L], e.g. a VAE's
  posterior mean. It is only ever called on `batch_size` observations at a time.

and returns a dict of named numbers. The protocol sizes are disentanglement_lib's
defaults. Where disentanglement_lib fits a scikit-learn model (logistic
regression, LinearSVC, gradient-boosted trees), this module fits a small
deterministic model written here, so that a score depends on the code and the
`rng` only, not on the installed scikit-learn; each docstring says which.

References:
    Higgins et al. (2017). beta-VAE: Learning Basic Visual Concepts with a
        Constrained Variational Framework (sec. 3, the BetaVAE score).
    Kim & Mnih (2018). Disentangling by Factorising (sec. 4, the FactorVAE score).
    Chen, Li, Grosse & Duvenaud (2018). Isolating Sources of Disentanglement in
        VAEs (eq. 7, MIG).
    Kumar, Sattigeri & Balakrishnan (2018). Variational Inference of Disentangled
        Latent Concepts from Unlabeled Observations (sec. 3, SAP).
    Eastwood & Williams (2018). A Framework for the Quantitative Evaluation of
        Disentangled Representations (sec. 3, DCI).
    Ridgeway & Mozer (2018). Learning Deep Disentangled Embeddings with the
        F-Statistic Loss (sec. 3, modularity and explicitness).
    Locatello et al. (2019). Challenging Common Assumptions in the Unsupervised
        Learning of Disentangled Representations (disentanglement_lib's protocols).
"""

import collections

import numpy as np

from keras_vae.metrics import discrete_mutual_information, discretize, mutual_information_gap


class FactorGrid:
    """A ground truth whose observations are its factors: to test metrics without images.

    Args:
        factor_sizes: number of values of each factor, e.g. (3, 6, 10, 8, 8).

    Example:
        >>> grid = FactorGrid((3, 6, 10, 8, 8))
        >>> beta_vae_score(grid, lambda x: x, np.random.default_rng(0), num_train=500, num_eval=200)
    """

    def __init__(self, factor_sizes):
        self.factor_sizes = tuple(int(n) for n in factor_sizes)
        if not self.factor_sizes or min(self.factor_sizes) < 1:
            raise ValueError(f"Every factor needs at least one value. Received: factor_sizes={factor_sizes}")

    def sample_factors(self, num, rng):
        """`num` factor vectors, each factor uniform over its values: int [num, K]."""
        return np.stack([rng.integers(0, n, num) for n in self.factor_sizes], axis=1)

    def observations(self, factors):
        """The factors themselves, as float [num, K]."""
        return np.asarray(factors, np.float64)


# ---------------------------------------------------------------- shared helpers

def _encode(ground_truth, representation, factors, batch_size):
    """Codes [n, L] of the observations of `factors` [n, K], `batch_size` at a time."""
    return np.concatenate([
        np.asarray(representation(ground_truth.observations(factors[i:i + batch_size])), np.float64)
        for i in range(0, len(factors), batch_size)])


def _sample_codes(ground_truth, representation, num, rng, batch_size):
    """(factors [num, K], codes [num, L]) of `num` uniformly drawn factor vectors."""
    factors = ground_truth.sample_factors(num, rng)
    return factors, _encode(ground_truth, representation, factors, batch_size)


def _standardize(train, test):
    """Both sets shifted and scaled by the train mean and std (constant columns left unscaled)."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def _softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _with_bias(x):
    return np.hstack([x, np.ones((len(x), 1))])  # (n, D) -> (n, D + 1)


def _softmax_loss(x, targets, theta, l2):
    """Mean cross-entropy of softmax(x θ) plus (l2 / 2) |θ|²."""
    logits = x @ theta
    top = logits.max(axis=1)
    log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return np.mean(log_norm - np.sum(targets * logits, axis=1)) + 0.5 * l2 * np.sum(theta**2)


def _fit_softmax_regression(x, labels, num_classes, l2=1e-4, max_iter=100, tol=1e-7):
    """Multinomial logistic regression by Newton's method with a backtracking line search.

    The L2 penalty covers the bias too, which makes the loss strictly convex
    (a single optimum, whatever path a solver takes to it) and keeps the
    weights finite on separable data. Returns θ [D + 1, C]; probabilities are softmax([x, 1] θ).
    """
    x = _with_bias(x)
    n, d = x.shape
    targets = np.eye(num_classes)[labels]
    theta = np.zeros((d, num_classes))
    for _ in range(max_iter):
        p = _softmax(x @ theta)
        grad = x.T @ (p - targets) / n + l2 * theta  # (D, C)
        if np.max(np.abs(grad)) < tol:
            break
        # Hessian over parameters ordered (class, feature): diag(p) - p pᵀ, each entry times x xᵀ.
        weighted = (p[:, :, None] * x[:, None, :]).reshape(n, num_classes * d)  # (n, C, D) -> (n, C*D)
        hessian = -weighted.T @ weighted / n + l2 * np.eye(num_classes * d)
        for c in range(num_classes):
            hessian[c * d:(c + 1) * d, c * d:(c + 1) * d] += (x * p[:, c:c + 1]).T @ x / n
        step = np.linalg.solve(hessian, grad.T.ravel()).reshape(num_classes, d).T  # (C*D,) -> (D, C)
        loss, slope, t = _softmax_loss(x, targets, theta, l2), np.sum(grad * step), 1.0
        while _softmax_loss(x, targets, theta - t * step, l2) > loss - 0.25 * t * slope and t > 1e-10:
            t /= 2
        theta -= t * step
    return theta


def _class_probabilities(theta, x):
    return _softmax(_with_bias(x) @ theta)


def _softmax_accuracy(theta, x, labels):
    return float(np.mean(np.argmax(_class_probabilities(theta, x), axis=1) == labels))


def _average_ranks(values):
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def roc_auc(scores, positives):
    """ROC AUC: P(score of a positive > score of a negative), a tie counting 1/2.

    Computed from average ranks (the Mann–Whitney U statistic), so ties need no
    pair loop. NaN when either class is empty.
    """
    positives = np.asarray(positives, bool)
    num_pos, num_neg = positives.sum(), (~positives).sum()
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(np.asarray(scores, np.float64))[positives].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def _normalized_entropy(p):
    """Entropy of each row of p [R, C] in log base C (0 when C == 1, where every row is certain)."""
    if p.shape[1] == 1:
        return np.zeros(len(p))
    logs = np.log(np.where(p > 0, p, 1.0))
    return -np.sum(p * logs, axis=1) / np.log(p.shape[1])


def _weighted_specificity(matrix):
    """Σ_rows ρ_r (1 − H_C(matrix_r / Σ matrix_r)), ρ_r = row sum / total: 1 when each row has one column."""
    totals = matrix.sum(axis=1)
    if totals.sum() <= 0:
        return 0.0
    used = totals > 0  # rows without importance weigh 0 and have no distribution
    rows = matrix[used] / totals[used, None]
    return float(np.sum(totals[used] / totals.sum() * (1 - _normalized_entropy(rows))))


def _check_positive(**sizes):
    for name, value in sizes.items():
        if int(value) != value or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def _train_test_codes(ground_truth, representation, rng, num_train, num_test, batch_size):
    """(train factors, train codes, test factors, test codes), drawn independently."""
    train = _sample_codes(ground_truth, representation, num_train, rng, batch_size)
    return train + _sample_codes(ground_truth, representation, num_test, rng, batch_size)


# ---------------------------------------------------------------- BetaVAE and FactorVAE scores

def _beta_vae_points(ground_truth, representation, rng, num_points, batch_size):
    """(points [num_points, L], labels [num_points]): mean |z(x1) − z(x2)| over pairs sharing factor `label`."""
    points, labels = [], rng.integers(0, len(ground_truth.factor_sizes), num_points)
    for k in labels:
        first = ground_truth.sample_factors(batch_size, rng)
        second = ground_truth.sample_factors(batch_size, rng)
        second[:, k] = first[:, k]
        codes = _encode(ground_truth, representation, np.concatenate([first, second]), batch_size)  # (2B, L)
        points.append(np.mean(np.abs(codes[:batch_size] - codes[batch_size:]), axis=0))  # (2B, L) -> (L,)
    return np.stack(points), labels


def beta_vae_score(ground_truth, representation, rng, batch_size=64, num_train=10000, num_eval=5000):
    """The BetaVAE score (Higgins et al. 2017, sec. 3): can a linear classifier tell which factor was fixed?

    Each point draws a factor k uniformly and `batch_size` pairs of factor
    vectors, the two of a pair sharing the value of factor k; the point is the
    mean over pairs of |z(x1) − z(x2)| [L], its label k. A multinomial logistic
    regression (standardized inputs, L2 1e-4, Newton's method:
    `_fit_softmax_regression`) is fit on `num_train` points and scored on
    `num_eval` others. disentanglement_lib fits scikit-learn's
    LogisticRegression on unstandardized points instead.

    Returns:
        {"train_accuracy", "eval_accuracy"}: 1 when the fixed factor always shows
        in its own dimensions, 1/K (chance) when codes ignore the factors.
    """
    _check_positive(batch_size=batch_size, num_train=num_train, num_eval=num_eval)
    train_x, train_y = _beta_vae_points(ground_truth, representation, rng, num_train, batch_size)
    eval_x, eval_y = _beta_vae_points(ground_truth, representation, rng, num_eval, batch_size)
    train_x, eval_x = _standardize(train_x, eval_x)
    theta = _fit_softmax_regression(train_x, train_y, len(ground_truth.factor_sizes))
    return {"train_accuracy": _softmax_accuracy(theta, train_x, train_y),
            "eval_accuracy": _softmax_accuracy(theta, eval_x, eval_y)}


def _factor_vae_votes(ground_truth, representation, rng, num_votes, batch_size, global_std, active):
    """Vote counts [L, K]: (dimension of least normalized variance, factor held fixed) per batch."""
    votes = np.zeros((len(active), len(ground_truth.factor_sizes)), np.int64)
    dims = np.flatnonzero(active)
    for k in rng.integers(0, len(ground_truth.factor_sizes), num_votes):
        factors = ground_truth.sample_factors(batch_size, rng)
        factors[:, k] = factors[0, k]
        codes = _encode(ground_truth, representation, factors, batch_size)[:, dims] / global_std[dims]
        votes[dims[np.argmin(np.var(codes, axis=0, ddof=1))], k] += 1
    return votes


def factor_vae_score(ground_truth, representation, rng, batch_size=64, num_train=10000, num_eval=5000,
                     num_variance_estimate=10000, collapse_threshold=0.05):
    """The FactorVAE score (Kim & Mnih 2018, sec. 4): does fixing a factor silence one dimension?

    Each dimension is scaled by its standard deviation over
    `num_variance_estimate` codes; dimensions whose standard deviation is below
    `collapse_threshold` (collapsed to a constant; disentanglement_lib's
    `prune_dims.threshold` of its published study) take no part. Each vote
    fixes a random factor k at a random value over `batch_size` factor vectors
    and votes (the active dimension of least scaled variance, k). The
    classifier is a majority vote — each dimension predicts the factor it got
    most training votes for — so it needs no fitting library at all.

    Returns:
        {"train_accuracy", "eval_accuracy", "num_active_dims"}: accuracies 1 for
        one dimension per factor, about 1/K for codes that ignore the factors,
        0 when every dimension is collapsed (then "num_active_dims" is 0).
    """
    _check_positive(batch_size=batch_size, num_train=num_train, num_eval=num_eval,
                    num_variance_estimate=num_variance_estimate)
    if batch_size < 2:
        raise ValueError(f"A variance needs `batch_size` >= 2. Received: batch_size={batch_size}")
    _, codes = _sample_codes(ground_truth, representation, num_variance_estimate, rng, batch_size)
    variances = np.var(codes, axis=0, ddof=1)  # (N, L) -> (L,)
    active = np.sqrt(variances) >= collapse_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    global_std = np.sqrt(variances)
    train_votes = _factor_vae_votes(ground_truth, representation, rng, num_train, batch_size, global_std, active)
    eval_votes = _factor_vae_votes(ground_truth, representation, rng, num_eval, batch_size, global_std, active)
    classifier = np.argmax(train_votes, axis=1)  # (L, K) -> (L,): the factor each dimension stands for
    return {"train_accuracy": float(train_votes.max(axis=1).sum() / num_train),
            "eval_accuracy": float(eval_votes[np.arange(len(classifier)), classifier].sum() / num_eval),
            "num_active_dims": int(active.sum())}


# ---------------------------------------------------------------- MIG and SAP

def mig(ground_truth, representation, rng, num_train=10000, bins=20, batch_size=64):
    """MIG (Chen et al. 2018, eq. 7) of `num_train` sampled codes: `keras_vae.metrics.mutual_information_gap`.

    Returns:
        {"discrete_mig"}: 1 when each factor is in exactly one dimension, about 0
        when no dimension carries more of a factor than the runner-up.
    """
    _check_positive(num_train=num_train, bins=bins, batch_size=batch_size)
    factors, codes = _sample_codes(ground_truth, representation, num_train, rng, batch_size)
    return {"discrete_mig": mutual_information_gap(codes, factors, bins)}


def _binned_majority_accuracy(z_train, y_train, z_test, y_test, bins):
    """Test accuracy of predicting y from one latent as the majority train label of its quantile bin."""
    edges = np.unique(np.quantile(z_train, np.arange(1, bins) / bins, method="inverted_cdf"))
    num_bins, num_classes = len(edges) + 1, int(max(y_train.max(), y_test.max())) + 1
    which = np.searchsorted(edges, z_train, side="right")
    counts = np.bincount(which * num_classes + y_train, minlength=num_bins * num_classes)
    counts = counts.reshape(num_bins, num_classes)  # (bins * C,) -> (bins, C)
    counts[counts.sum(axis=1) == 0] = np.bincount(y_train, minlength=num_classes)  # empty bin: overall majority
    prediction = np.argmax(counts, axis=1)[np.searchsorted(edges, z_test, side="right")]
    return float(np.mean(prediction == y_test))


def sap_score(ground_truth, representation, rng, num_train=10000, num_test=5000, bins=100, batch_size=64):
    """SAP (Kumar et al. 2018, sec. 3): the mean over factors of the gap between the two most predictive dimensions.

    The score matrix S [L, K] holds the test accuracy of predicting factor k
    from dimension j alone. disentanglement_lib fits scikit-learn's LinearSVC
    there; here the predictor is a histogram classifier: `bins` equal-mass
    bins of z_j on the train codes, each labelled with its majority factor
    value. It is non-parametric (a dimension that encodes a factor
    non-monotonically still predicts it), has nothing to fit, and with `bins`
    at least the largest factor size an exact encoding scores 1.

    Returns:
        {"sap_score"}: mean_k (top − second) of S[:, k]; about 1 − 1/size_k per
        factor for a perfect code (the runner-up scores chance), about 0 when
        no dimension is predictive. With one dimension the runner-up is 0.
    """
    _check_positive(num_train=num_train, num_test=num_test, bins=bins, batch_size=batch_size)
    train_f, train_z, test_f, test_z = _train_test_codes(ground_truth, representation, rng, num_train, num_test,
                                                         batch_size)
    scores = np.array([[_binned_majority_accuracy(train_z[:, j], train_f[:, k], test_z[:, j], test_f[:, k], bins)
                        for k in range(train_f.shape[1])] for j in range(train_z.shape[1])])  # [L, K]
    top_two = np.sort(np.vstack([np.zeros((1, scores.shape[1])), scores]), axis=0)[-2:]  # (L+1, K) -> (2, K)
    return {"sap_score": float(np.mean(top_two[1] - top_two[0]))}


# ---------------------------------------------------------------- DCI

_MIN_GAIN = 1e-7  # impurity decreases below this are float noise of a pure node, not splits
_Tree = collections.namedtuple("_Tree", ["splits", "leaf_labels", "importances"])


def _xlogx(counts):
    return counts * np.log(np.maximum(counts, 1))  # counts are whole numbers: 0 log 0 = 0


def _node_impurity(counts, sizes):
    """Entropy times node size, n log n − Σ_c n_c log n_c, of class counts [..., C] (0 for empty nodes)."""
    return _xlogx(sizes) - np.sum(_xlogx(counts), axis=-1)


def _best_splits_on(values, onehot, node, num_nodes, min_leaf):
    """Per node: (gain [N], threshold [N]) of the best split `values <= threshold`, gain 0 if none."""
    order = np.lexsort((values, node))  # by node, then by value
    v, nd = values[order], node[order]
    cum = np.vstack([np.zeros((1, onehot.shape[1])), np.cumsum(onehot[order], axis=0)])  # (n+1, C)
    start = np.searchsorted(nd, np.arange(num_nodes))
    end = np.searchsorted(nd, np.arange(num_nodes), side="right")
    left = cum[1:] - cum[start][nd]  # (n, C): counts up to and including each position, within its node
    total = (cum[end] - cum[start])[nd]
    n_left = np.arange(1, len(v) + 1) - start[nd]
    n_right = (end - start)[nd] - n_left
    gain = (_node_impurity(total, n_left + n_right) - _node_impurity(left, n_left)
            - _node_impurity(total - left, n_right))
    following = np.append(v[1:], np.inf)
    gain[(n_left < min_leaf) | (n_right < min_leaf) | (following <= v)] = 0.0
    best = np.lexsort((-gain, nd))[start[end > start]]  # first position of each node's largest gain
    gains, thresholds = np.zeros(num_nodes), np.full(num_nodes, np.inf)
    gains[end > start], thresholds[end > start] = gain[best], (v[best] + following[best]) / 2
    return gains, thresholds


def _descend(x, node, features, thresholds):
    """Each point's child node: 2 * node, plus 1 when its split feature is above the threshold."""
    return 2 * node + (x[np.arange(len(x)), features[node]] > thresholds[node])


def _fit_tree(x, labels, num_classes, max_depth, min_leaf):
    """A CART classification tree on entropy (information gain), grown a level at a time.

    Every split tries every feature and every threshold between consecutive
    distinct values; ties go to the first feature and the lowest threshold,
    so the tree is deterministic. A node that does not split sends everything
    left (threshold +inf). Returns a `_Tree`: splits [(features [2^d],
    thresholds [2^d]) per level d], leaf labels [2^depth] and importances [D],
    a feature's importance being the total impurity its splits removed (mean
    decrease in impurity).
    """
    onehot = np.eye(num_classes)[labels]
    node, splits, importances = np.zeros(len(x), np.int64), [], np.zeros(x.shape[1])
    for depth in range(max_depth):
        per_feature = [_best_splits_on(x[:, f], onehot, node, 2**depth, min_leaf) for f in range(x.shape[1])]
        gains, thresholds = (np.stack(column) for column in zip(*per_feature))  # (D, N) each
        if not (gains > _MIN_GAIN).any():
            break
        features = np.argmax(gains, axis=0)  # (D, N) -> (N,): the first feature of largest gain
        best_gain, thresholds = gains[features, np.arange(2**depth)], thresholds[features, np.arange(2**depth)]
        splits_here = best_gain > _MIN_GAIN
        thresholds[~splits_here] = np.inf
        np.add.at(importances, features[splits_here], best_gain[splits_here])
        splits.append((features, thresholds))
        node = _descend(x, node, features, thresholds)
    leaves = np.zeros((2 ** len(splits), num_classes))
    np.add.at(leaves, node, onehot)
    return _Tree(splits, np.argmax(leaves, axis=1), importances)


def _tree_predict(tree, x):
    node = np.zeros(len(x), np.int64)
    for features, thresholds in tree.splits:
        node = _descend(x, node, features, thresholds)
    return tree.leaf_labels[node]


def disentanglement_completeness(importances):
    """DCI's disentanglement and completeness (Eastwood & Williams 2018, eqs. 1–4) of importances R [L, K].

    Disentanglement Σ_j ρ_j (1 − H_K(P_j)), P_j row j of R normalized,
    ρ_j = Σ_k R_jk / Σ R; completeness the same over columns with log base L.
    A single factor (or dimension) counts as fully specific.

    Returns:
        (disentanglement, completeness), both in [0, 1], 0 for an all-zero R.
    """
    importances = np.asarray(importances, np.float64)
    return _weighted_specificity(importances), _weighted_specificity(importances.T)


def dci(ground_truth, representation, rng, num_train=10000, num_test=5000, max_depth=8, min_leaf=5,
        batch_size=64):
    """DCI (Eastwood & Williams 2018): disentanglement, completeness, informativeness.

    One predictor per factor maps the whole code to the factor; its relative
    importances fill column k of R [L, K]. disentanglement_lib uses
    scikit-learn's gradient-boosted trees, whose importances change with its
    version. Here the predictor is one classification tree (`_fit_tree`, depth
    `max_depth`, at least `min_leaf` points per leaf), fully deterministic,
    and R holds its mean-decrease-in-impurity importances — the quantity
    scikit-learn sums over its boosted trees — normalized to sum to 1 per
    factor. They are non-negative and, the tree splitting a dimension as often
    as it helps, see non-monotonic relations too. The impurity is entropy,
    not Gini: on evenly spread values every split between whole values removes
    the same Gini impurity, and a deterministic tie-break then peels one value
    off per level, where information gain halves the values, so an exact code
    of a 40-valued factor is read in 6 levels. Of several dimensions that
    duplicate one factor, a tree credits mostly the first, so completeness
    overlooks duplication (boosted trees largely do as well).

    Returns:
        {"disentanglement", "completeness", "informativeness_train",
        "informativeness_test"}: informativeness is the mean over factors of
        the trees' accuracy (chance is about 1/size_k).
    """
    _check_positive(num_train=num_train, num_test=num_test, max_depth=max_depth, min_leaf=min_leaf,
                    batch_size=batch_size)
    train_f, train_z, test_f, test_z = _train_test_codes(ground_truth, representation, rng, num_train, num_test,
                                                         batch_size)
    importances, train_accuracy, test_accuracy = np.zeros((train_z.shape[1], train_f.shape[1])), [], []
    for k, size in enumerate(ground_truth.factor_sizes):
        tree = _fit_tree(train_z, train_f[:, k], size, max_depth, min_leaf)
        importances[:, k] = tree.importances / max(tree.importances.sum(), 1e-12)
        train_accuracy.append(np.mean(_tree_predict(tree, train_z) == train_f[:, k]))
        test_accuracy.append(np.mean(_tree_predict(tree, test_z) == test_f[:, k]))
    disentanglement, completeness = disentanglement_completeness(importances)
    return {"disentanglement": disentanglement, "completeness": completeness,
            "informativeness_train": float(np.mean(train_accuracy)),
            "informativeness_test": float(np.mean(test_accuracy))}


# ---------------------------------------------------------------- modularity and explicitness

def modularity(mutual_information):
    """Modularity (Ridgeway & Mozer 2018, sec. 3) of a mutual-information matrix [L, K].

    For dimension j, θ_j = max_k MI_jk and the template t_j keeps only that
    entry: δ_j = Σ_k (MI_jk − t_jk)² / (θ_j² (K − 1)), modularity_j = 1 − δ_j.
    A dimension with no information about any factor scores 0 and still
    counts in the mean, as in disentanglement_lib.
    """
    squared = np.asarray(mutual_information, np.float64) ** 2
    top = squared.max(axis=1)
    rest = squared.sum(axis=1) - top
    deviation = np.divide(rest, top * max(squared.shape[1] - 1, 1), out=np.zeros_like(top), where=top > 0)
    return float(np.mean(np.where(top > 0, 1 - deviation, 0.0)))


def _mean_one_vs_rest_auc(probabilities, labels):
    """Mean over the classes in `labels` of the AUC of p(class) for that class against the others."""
    classes = np.unique(labels)
    if len(classes) < 2:
        return float("nan")
    return float(np.mean([roc_auc(probabilities[:, c], labels == c) for c in classes]))


def modularity_explicitness(ground_truth, representation, rng, num_train=10000, num_test=5000, bins=20,
                            batch_size=64):
    """Modularity and explicitness (Ridgeway & Mozer 2018), as disentanglement_lib computes them.

    Modularity: `modularity` of the mutual information between train codes
    binned into `bins` equal-width bins (`keras_vae.metrics.discretize`) and
    the factors. Explicitness: per factor, a multinomial logistic regression
    (`_fit_softmax_regression`) from the standardized code to the factor; the
    AUC of each value's probability against the other values (`roc_auc`), mean
    over values, then over factors. A multinomial model — not one binary
    model per value — is what lets a middle value of an ordered factor get a
    peaked probability from a linear code, as scikit-learn's default does.

    Returns:
        {"modularity_score", "explicitness_score_train", "explicitness_score_test"}:
        explicitness is 0.5 for codes that ignore the factors.
    """
    _check_positive(num_train=num_train, num_test=num_test, bins=bins, batch_size=batch_size)
    train_f, train_z, test_f, test_z = _train_test_codes(ground_truth, representation, rng, num_train, num_test,
                                                         batch_size)
    binned = discretize(train_z, bins)
    mutual_information = np.array([[discrete_mutual_information(binned[:, j], train_f[:, k])
                                    for k in range(train_f.shape[1])] for j in range(binned.shape[1])])  # [L, K]
    train_x, test_x = _standardize(train_z, test_z)
    explicitness = []
    for k, size in enumerate(ground_truth.factor_sizes):
        if size < 2:
            continue  # a constant factor has no AUC
        theta = _fit_softmax_regression(train_x, train_f[:, k], size)
        explicitness.append([_mean_one_vs_rest_auc(_class_probabilities(theta, x), f[:, k])
                             for x, f in ((train_x, train_f), (test_x, test_f))])
    train_score, test_score = np.mean(explicitness, axis=0) if explicitness else (float("nan"),) * 2
    return {"modularity_score": modularity(mutual_information),
            "explicitness_score_train": float(train_score), "explicitness_score_test": float(test_score)}


METRICS = {
    "beta_vae": beta_vae_score,
    "factor_vae": factor_vae_score,
    "mig": mig,
    "sap": sap_score,
    "dci": dci,
    "modularity_explicitness": modularity_explicitness,
}
