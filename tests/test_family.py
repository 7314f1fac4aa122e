"""The model family, tested over the registry, plus each model's own facts."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from conftest import SMALL_NVAE, config_for, invoke, tiny_images
from keras_vae import losses, runs
from keras_vae.config import FitConfig
from keras_vae.errors import UserError
from keras_vae.export import export_saved_model
from keras_vae.models import build_model, model_names

tfd = tfp.distributions

# Every registered model, and the VAE with each learned prior.
VARIANTS = [(name, {}) for name in model_names()] + [("vae", {"prior": "mog"}), ("vae", {"prior": "vamp"})]
IDS = [name + ("-" + extra["prior"] if extra else "") for name, extra in VARIANTS]


def images(num=64):
    return (tiny_images(num) / 255).astype(np.float32)


def labels(num=64):
    return (np.arange(num) % 3).astype(np.int32)


def make(name, **extra):
    keras.utils.set_random_seed(0)  # the same weights whatever ran before in this worker process
    values = dict(latent_dim=3, seed=1, kl_warmup_steps=0, prior_components=4,
                  **(SMALL_NVAE if name == "nvae" else {}))
    config = config_for(name, **dict(values, **extra))
    model = build_model(config, (28, 28, 1), num_classes=3)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    return model


def tfd_mixture(logits, loc, scale):
    """tfd's own diagonal Gaussian mixture: the reference for `priors.gaussian_mixture`."""
    return tfd.MixtureSameFamily(tfd.Categorical(logits=logits), tfd.Independent(tfd.Normal(loc, scale), 1))


@pytest.mark.parametrize("name, extra", VARIANTS, ids=IDS)
def test_every_model_trains_lowers_its_loss_and_exports_what_it_computes(name, extra, tmp_path):
    model = make(name, **extra)
    x, y = images(), labels()
    before = [w.numpy().copy() for w in model.trainable_weights]
    # Every model gets (x, y) batches; only conditional ones read y.
    history = model.fit(x, y, batch_size=32, epochs=6, verbose=0, shuffle=False).history
    assert all(not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    assert history["loss"][-1] < 0.8 * history["loss"][0]

    loaded = tf.saved_model.load(export_saved_model(model, str(tmp_path), name))
    given = {"y": tf.constant(y[:4])} if model.uses_labels else {}
    out = loaded.signatures["reconstruct"](x=tf.constant(x[:4]), **given)
    np.testing.assert_allclose(out["x_mean"], model.reconstruct(x[:4], given.get("y")), atol=1e-5)
    label = {"y": tf.constant(2)} if model.uses_labels else {}
    warm = {"temperature": tf.constant(0.5)} if model.serves_temperature else {}  # nvae's sample takes one
    sample = loaded.signatures["sample"](num_samples=tf.constant(3), seed=tf.constant(2), **label, **warm)
    expected = model.sample(3, seed=2, y=label.get("y"), temperature=warm.get("temperature", 1.0))
    np.testing.assert_allclose(sample["x_mean"], expected[0], atol=1e-5)
    if warm:
        np.testing.assert_allclose(sample["z"], 0.5 * model.sample(3, seed=2)[1], rtol=1e-5, atol=1e-6)
    score = loaded.signatures["score"](x=tf.constant(x[:4]), **given)
    # The exported score is the trained model's, far above the same network untrained.
    _, untrained = make(name, **extra).importance_log_weights(tf.constant(x[:4]), 2, seed=tf.constant([1, 2]),
                                                             y=given.get("y"))
    assert np.mean(score["elbo"]) > np.mean(untrained) + 20


def test_iwae_bound_with_one_sample_is_the_elbo_and_grows_with_k():
    model = make("iwae", iw_k=1)
    x = images(8)
    model.fit(x, batch_size=8, epochs=3, verbose=0)
    draws = 300
    elbo = np.mean([model.compute_terms(x)["elbo"].numpy() for _ in range(draws)], axis=0)
    vae_elbo = np.mean([super(type(model), model).compute_terms(x)["elbo"].numpy() for _ in range(draws)], axis=0)
    # k = 1 is the ELBO: equal in expectation (Monte-Carlo vs analytic KL); averaged over
    # 300 draws x 8 examples the standard error is ~0.3%.
    assert elbo.mean() == pytest.approx(vae_elbo.mean(), rel=0.01)
    means = {}
    for k in (1, 5, 50):
        log_weights, _ = model.importance_log_weights(np.tile(x, (40, 1, 1, 1)), k, seed=tf.constant([k, 3]))
        means[k] = losses.iwae_bound(log_weights).numpy().mean()
    assert means[1] < means[5] < means[50]


def test_beta_vae_capacity_rises_linearly_and_pulls_the_kl_towards_it():
    assert [float(losses.capacity(s, 20.0, 100)) for s in (0, 50, 100, 200)] == [0.0, 10.0, 20.0, 20.0]
    kl = tf.constant([3.0, 5.0])  # mean 4
    assert float(losses.capacity_regularizer(kl, 10.0, 1.0)) == pytest.approx(30.0)
    assert float(losses.capacity_regularizer(kl, 10.0, 6.0)) == pytest.approx(20.0)
    model = make("beta_vae", beta=50.0, capacity_max=10.0, capacity_steps=4)
    history = model.fit(images(32), batch_size=8, epochs=2, verbose=0, shuffle=False).history
    assert history["capacity"] == pytest.approx([(0 + 2.5 + 5 + 7.5) / 4, 10.0])  # C at steps 0..7, capped


def test_denoising_corrupts_only_while_training():
    x = np.full((4, 28, 28, 1), 0.5, np.float32)
    masking = make("dae", noise="masking", noise_level=0.25)
    np.testing.assert_array_equal(masking.corrupt(x, training=False), x)
    corrupted = masking.corrupt(tf.constant(np.ones((64, 28, 28, 1), np.float32)), training=True).numpy()
    assert set(np.unique(corrupted)) == {0.0, 1.0} and np.mean(corrupted == 0) == pytest.approx(0.25, abs=0.02)
    gaussian = make("dae", noise="gaussian", noise_level=0.3)
    noisy = gaussian.corrupt(tf.constant(x), training=True).numpy()
    assert np.std(noisy - x) == pytest.approx(0.3, rel=0.05)


def test_the_autoencoder_code_is_deterministic_and_has_no_elbo():
    from keras_vae.data.splits import Split
    from keras_vae.evaluate import evaluate_model

    model = make("ae")
    x = images(8)
    mean, stddev = model.encode(x)
    assert np.all(stddev.numpy() == 0)
    terms = model.compute_terms(x)
    np.testing.assert_allclose(terms["reconstruction_loss"], model.compute_terms(x)["reconstruction_loss"])
    report = evaluate_model(model, Split("test", x), iw_samples=4, batch_size=8, progress=False)
    assert report["elbo"] is None and report["nll_iw"] is None and report["reconstruction_loss"] > 0


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_learned_priors_take_the_monte_carlo_kl_and_learn(prior):
    model = make("vae", prior=prior)
    x = images(16)
    posterior = model.posterior(x)
    assert losses.kl_per_dimension(posterior, model.prior()) is None  # no closed form
    z = posterior.sample(seed=(4, 5))
    np.testing.assert_allclose(losses.kl_divergence(posterior, model.prior(), z),
                               posterior.log_prob(z) - model.prior().log_prob(z), rtol=1e-5)
    prior_weights = [w for w in model.trainable_weights if "prior" in w.path or "pseudo" in w.path]
    before = [w.numpy().copy() for w in prior_weights]
    model.fit(x, batch_size=16, epochs=2, verbose=0)
    assert prior_weights and all(not np.allclose(b, w.numpy()) for b, w in zip(before, prior_weights))


def test_cvae_samples_of_class_k_are_classified_as_k(fashion_dir):
    from keras_vae.data.datasets import load_dataset
    from keras_vae.metrics import linear_probe_accuracy

    data = load_dataset("fashion_mnist", fashion_dir)
    x = (data.x_train[:3000] / 255).astype(np.float32)
    y = data.y_train[:3000].astype(np.int32)
    config = FitConfig(model="cvae", latent_dim=8, seed=0, kl_warmup_steps=0)
    model = build_model(config, data.image_shape, data.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(x, y, batch_size=100, epochs=8, verbose=0)
    per_class = 30
    wanted = np.repeat(np.arange(10), per_class).astype(np.int32)
    samples = model.sample(len(wanted), seed=3, y=wanted)[0].numpy()
    # A pixel-space linear probe trained on real images (it scores ~0.8 on real test images).
    pixels = lambda images: images.reshape(len(images), -1)  # noqa: E731
    # Measured: 0.42 for z ~ N(0, I) (chance is 0.1; the probe scores 0.81 on real test images),
    # 0.8-1.0 for the decoded prior mean z = 0 of each class (ten images: 8 to 10 classes right):
    # one code, ten labels, mostly ten recognisable classes.
    assert linear_probe_accuracy(pixels(x), y, pixels(samples), wanted) > 0.3
    centres = model.decode(np.zeros((len(wanted), 8), np.float32), tf.constant(wanted)).numpy()
    assert linear_probe_accuracy(pixels(x), y, pixels(centres), wanted) >= 0.6


def test_cvae_needs_labels_and_checks_them():
    model = make("cvae")
    with pytest.raises(UserError, match="give labels"):
        model.reconstruct(images(2))
    with pytest.raises(UserError, match="labelled dataset"):
        build_model(FitConfig(model="cvae"), (28, 28, 1), num_classes=0)
    signatures = model.serving_signatures()
    with pytest.raises(tf.errors.InvalidArgumentError, match="class labels in 0..2"):
        signatures["decode"](z=tf.zeros([1, 3]), y=tf.constant([3]))


@pytest.fixture(scope="module")
def cvae_run(tiny_run):
    root, _ = tiny_run("c", "--model", "cvae", "--epochs", 1, "--latent-dim", 3, labels=True)
    np.savez(root / "unlabelled.npz", x=tiny_images(96))
    return root, invoke


def test_cvae_from_the_command_line(cvae_run):
    from PIL import Image

    root, invoke = cvae_run
    run = root / "run"
    assert invoke("sample", run, "--out", root / "s.png", "--label", 1, "--num", 6).exit_code == 0
    assert Image.open(root / "s.png").size[0] > 0
    assert invoke("sample", run, "--out", root / "s0.png", "--label", 0, "--num", 6).exit_code == 0
    assert not np.array_equal(np.asarray(Image.open(root / "s.png")), np.asarray(Image.open(root / "s0.png")))
    for command in (["reconstruct", "--num", 4], ["interpolate", "--pairs", 2, "--steps", 3],
                    ["traverse", "--steps", 3], ["manifold", "--size", 3, "--label", 2]):
        result = invoke(command[0], run, "--out", root / f"{command[0]}.png", *command[1:])
        assert result.exit_code == 0, result.output
    report = json.loads(invoke("evaluate", run, "--iw-samples", 4, "--json").output)
    assert report["nll_iw"] <= -report["elbo"] + 1e-3

    saved = root / "exports" / "c" / "1"
    result = invoke("predict", "--saved-model", saved, "--signature", "sample", "--label", 2, "--num-samples", 5,
                    "--output", root / "p.npz")
    assert result.exit_code == 0, result.output
    _, model = runs.load_run(str(run))
    sampled = np.load(root / "p.npz")["x_mean"]
    assert sampled.shape == (5, 28, 28, 1)
    np.testing.assert_allclose(sampled, model.sample(5, seed=0, y=2)[0], atol=1e-5)  # the label reaches the export
    z = np.zeros((4, 3), np.float32)
    np.save(root / "z.npy", z)
    for label in (0, 2):
        result = invoke("predict", "--saved-model", saved, "--signature", "decode", "--input", root / "z.npy",
                        "--label", label, "--output", root / f"d{label}.npz")
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(np.load(root / f"d{label}.npz")["x_mean"], model.decode(z, np.full(4, label)),
                                   atol=1e-5)
    assert not np.allclose(np.load(root / "d0.npz")["x_mean"], np.load(root / "d2.npz")["x_mean"], atol=1e-3)


@pytest.mark.parametrize("args, message", [
    (["sample", "RUN", "--label", 3], "--label must lie in 0..2. Received: label=3"),
    (["attribute", "RUN", "--label", 1], "takes the label as an input"),
    (["predict", "--saved-model", "SAVED", "--signature", "sample"], "needs --label K"),
    (["fit", "--model", "cvae", "--dataset", "UNLABELLED", "--epochs", 1], "is conditional and needs labels"),
])
def test_cvae_mistakes_get_a_message_and_status_2(cvae_run, args, message):
    root, invoke = cvae_run
    names = {"RUN": root / "run", "SAVED": root / "exports" / "c" / "1", "UNLABELLED": root / "unlabelled.npz"}
    args = [names.get(a, a) for a in args]
    if args[0] != "predict" and args[0] != "fit":
        args += ["--out", root / "x.png"]
    if args[0] == "fit":
        args += ["--run-dir", root / "other"]
    result = invoke(*args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_precision_weighting_is_the_normalized_product_of_two_gaussians():
    from keras_vae.models.hierarchical import precision_weighted

    loc, scale = precision_weighted(tf.constant([1.0]), tf.constant([2.0]), tf.constant([-3.0]), tf.constant([0.5]))
    grid = np.linspace(-10, 10, 200001)
    density = np.exp(-0.5 * ((grid - 1) / 2) ** 2 - 0.5 * ((grid + 3) / 0.5) ** 2)
    density /= density.sum()
    mean = (grid * density).sum()
    assert float(loc[0]) == pytest.approx(mean, abs=1e-6)
    assert float(scale[0]) == pytest.approx(np.sqrt(((grid - mean) ** 2 * density).sum()), abs=1e-6)


def test_hvae_reports_positive_kl_per_layer_and_samples_top_down():
    model = make("hvae")
    x = images(32)
    history = model.fit(x, batch_size=16, epochs=3, verbose=0).history
    assert {"kl_z1", "kl_z2"} <= set(history)
    terms = model.compute_terms(x)
    assert np.all(terms["kl_z1"].numpy() > 0) and np.all(terms["kl_z2"].numpy() > 0)
    np.testing.assert_allclose(terms["kl"], terms["kl_z1"] + terms["kl_z2"], rtol=1e-5)
    np.testing.assert_allclose(tf.reduce_sum(terms["kl_per_dim"], -1), terms["kl"], rtol=1e-4)
    # The mean log importance weight (Monte-Carlo KLs) estimates the same ELBO (analytic KLs).
    _, elbo_mc = model.importance_log_weights(x, 2000, seed=tf.constant([1, 2]))
    elbo = np.mean([model.compute_terms(x)["elbo"].numpy() for _ in range(200)], axis=0)
    assert float(np.mean(elbo_mc)) == pytest.approx(float(np.mean(elbo)), rel=0.01)
    # The code [ε1, z2] decodes through z1 = μp(z2) + σp(z2) ε1; the code mean reconstructs.
    code = model.sample(5, seed=4)[1].numpy()
    assert code.shape == (5, 6)
    prior_loc, prior_scale = model.top_down_prior(code[:, 3:])
    np.testing.assert_allclose(model.decoder_inputs(code), prior_loc + prior_scale * code[:, :3], rtol=1e-5)
    np.testing.assert_allclose(model.decode(model.encode(x)[0]), model.reconstruct(x), atol=1e-6)


def test_beta_tc_vae_adds_beta_minus_one_total_correlations_to_the_vae_loss():
    x = images(64)
    tc_model, vae = make("beta_tc_vae", beta=4.0), make("vae")
    vae.set_weights(tc_model.get_weights())  # same networks: the same terms for the same seed
    terms = tc_model.compute_terms(tf.constant(x), training=False)
    vae_loss = float(vae.objective(dict(terms), tf.constant(1.0)))
    tc_loss = float(tc_model.objective(terms, tc_model.current_beta()))
    # The logged decomposition is the minibatch-weighted estimate of the batch's aggregate posterior ...
    expected = losses.total_correlation_decomposition(terms["z"], terms["posterior_loc"], terms["posterior_scale"])
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(float(value), rel=1e-6)
    # ... its three terms add up to the Monte-Carlo KL of the samples ...
    log_q = tfd_normal(terms["posterior_loc"], terms["posterior_scale"]).log_prob(terms["z"])
    log_p = tfd_normal(tf.zeros_like(terms["z"]), tf.ones_like(terms["z"])).log_prob(terms["z"])
    assert sum(float(v) for v in expected.values()) == pytest.approx(float(tf.reduce_mean(log_q - log_p)), abs=1e-3)
    # ... and β weighs only the total correlation: loss(β=4) = loss(VAE) + 3·TC.
    assert tc_loss == pytest.approx(vae_loss + 3 * float(expected["total_correlation"]), rel=1e-5)


def tfd_normal(loc, scale):
    import tensorflow_probability as tfp

    return tfp.distributions.Independent(tfp.distributions.Normal(loc, scale), 1)


@pytest.mark.parametrize("dip_type, diagonal_factor", [("i", 10.0), ("ii", 1.0)])
def test_dip_vae_adds_the_covariance_penalty_of_its_batch(dip_type, diagonal_factor):
    x = images(64)
    dip, vae = make("dip_vae", dip_type=dip_type, lambda_od=2.0), make("vae")
    vae.set_weights(dip.get_weights())
    terms = dip.compute_terms(tf.constant(x), training=False)
    loc, scale = terms["posterior_loc"].numpy(), terms["posterior_scale"].numpy()
    covariance = np.cov(loc, rowvar=False, bias=True) + (np.diag((scale**2).mean(0)) if dip_type == "ii" else 0)
    off = covariance - np.diag(np.diag(covariance))
    penalty = 2.0 * (off**2).sum() + 2.0 * diagonal_factor * ((np.diag(covariance) - 1) ** 2).sum()
    loss = float(dip.objective(terms, tf.constant(1.0)))
    assert float(terms["dip_penalty"]) == pytest.approx(penalty, rel=1e-4)
    assert loss == pytest.approx(float(vae.objective(dict(terms), tf.constant(1.0))) + penalty, rel=1e-5)


@pytest.mark.parametrize("name, tags", [
    ("beta_tc_vae", {"mutual_information", "total_correlation", "dimension_wise_kl"}),
    ("dip_vae", {"dip_penalty"}),
])
def test_the_disentangling_objectives_log_their_terms_every_epoch(name, tags):
    model = make(name)
    history = model.fit(images(), labels(), batch_size=32, epochs=2, verbose=0).history
    for tag in tags:
        assert len(history[tag]) == 2 and np.all(np.isfinite(history[tag]))
    if name == "beta_tc_vae":  # the total correlation of a trained batch is a positive number of nats
        assert history["total_correlation"][-1] > 0


def test_the_mixture_priors_log_density_is_tfds_without_a_components_by_code_array():
    """`gaussian_mixture`'s log-density and its gradients equal tfd's MixtureSameFamily's for codes near and far
    from narrow and wide components, in the codes' dtype and shape; its graph holds no [samples, batch,
    components, code] tensor, which is what lets an 18,000-component prior score importance samples."""
    from keras_vae import priors

    rng = np.random.default_rng(0)
    logits, loc = rng.normal(size=37), rng.normal(size=(37, 5)) * 2
    scale = np.exp(rng.uniform(np.log(0.02), np.log(2.0), size=(37, 5)))
    z = np.concatenate([loc[rng.integers(0, 37, 12)] + rng.normal(size=(12, 5)) * 0.05,
                        rng.normal(size=(12, 5)) * 3]).reshape(4, 6, 5)
    params = [tf.Variable(a, dtype=tf.float32) for a in (logits, loc, scale)]
    codes = tf.Variable(z, dtype=tf.float32)
    results = []
    for build, dtype in ((priors.gaussian_mixture, tf.float32), (tfd_mixture, tf.float64)):
        with tf.GradientTape() as tape:
            log_p = build(*(tf.cast(p, dtype) for p in params)).log_prob(tf.cast(codes, dtype))
            total = tf.reduce_sum(log_p)
        results.append((log_p, tape.gradient(total, [*params, codes])))
    (ours, our_grads), (reference, reference_grads) = results
    assert ours.dtype == tf.float32 and ours.shape == (4, 6)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-6, atol=1e-4)
    for got, want in zip(our_grads, reference_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-3)
    assert isinstance(priors.gaussian_mixture(*params), tfd.MixtureSameFamily)
    graph = tf.function(lambda c: priors.gaussian_mixture(*params).log_prob(c)).get_concrete_function(
        tf.TensorSpec([4, 6, 5], tf.float32)).graph
    sizes = [o.shape.num_elements() or 0 for op in graph.get_operations() for o in op.outputs]
    assert max(sizes) == 4 * 6 * 37  # [samples × batch, components]; tfd's would hold × 5


def test_em_refits_a_mixture_and_assigns_it_to_the_learned_prior():
    """EM from a poor start recovers a known two-component mixture; its log-likelihood is the tfd mixture's;
    the fit assigned to a `mog` prior is what that prior then is."""
    from keras_vae import priors

    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal([-3.0, 0.0], [0.5, 1.0], (3000, 2)),
                             rng.normal([3.0, 2.0], [1.0, 0.3], (2000, 2))])[rng.permutation(5000)]
    start = (np.zeros(2), np.array([[-1.0, 0.0], [1.0, 0.0]]), np.ones((2, 2)))
    reference = tfd_mixture(*(tf.constant(a, tf.float32) for a in start))
    np.testing.assert_allclose(priors.mixture_log_likelihood(points, *start)[0],
                               reference.log_prob(points.astype(np.float32)).numpy(), rtol=1e-5)
    logits, loc, scale, curve = priors.fit_mixture(points[500:], *start, held_out=points[:500])
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), [0.6, 0.4], atol=0.02)
    np.testing.assert_allclose(loc, [[-3.0, 0.0], [3.0, 2.0]], atol=0.06)
    np.testing.assert_allclose(scale, [[0.5, 1.0], [1.0, 0.3]], rtol=0.05)
    assert curve[-1] - curve[0] > 3.0

    model = make("vae", prior="mog", prior_components=2, latent_dim=2)
    priors.assign_mixture(model, logits, loc, scale)
    prior = model.prior()
    np.testing.assert_allclose(prior.mixture_distribution.probs_parameter().numpy(),
                               np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)
    np.testing.assert_allclose(prior.components_distribution.distribution.scale.numpy(), scale, rtol=1e-4)
    np.testing.assert_allclose(prior.components_distribution.distribution.loc.numpy(), loc, rtol=1e-6)


def test_em_stops_before_the_mixture_fits_the_noise_of_few_codes():
    """Ten components on 40 draws of one Gaussian: fitted to convergence they narrow onto single codes and
    score fresh draws far worse; judged on held-out draws, EM stops before that."""
    from keras_vae import priors

    rng = np.random.default_rng(1)
    points, held_out, fresh = (rng.normal(size=(n, 3)) for n in (40, 40, 5000))
    start = (np.zeros(10), rng.normal(size=(10, 3)), np.ones((10, 3)))
    overfit = priors.fit_mixture(points, *start, max_iterations=500, tolerance=-np.inf)
    stopped = priors.fit_mixture(points, *start, held_out=held_out, max_iterations=500)
    score = (lambda fit: priors.mixture_log_likelihood(fresh, *fit[:3])[0].mean())
    assert score(stopped) > score(overfit) + 1.0
    assert len(stopped[3]) > 1 and score(stopped) > score(start) + 0.1  # it stopped after gaining, not at once


def test_fit_prior_refits_a_trained_mixture_prior_to_the_aggregate_posterior(tmp_path):
    """`keras-vae fit-prior` on a `--prior mog` run: the refitted prior assigns the test split's codes a
    higher likelihood than the jointly trained one, the model file holds it, and training on is refused."""
    from keras_vae.codes import posterior_samples
    from keras_vae.data import datasets
    from keras_vae.data.splits import load_split

    data = datasets.load_sprites(size=28, num_train=2048, num_test=512, seed=0)
    np.savez(tmp_path / "sprites.npz", x=data.x_train, x_test=data.x_test)
    run = tmp_path / "run"
    result = invoke("fit", "--dataset", tmp_path / "sprites.npz", "--prior", "mog", "--prior-components", 20,
                    "--latent-dim", 4, "--epochs", 2, "--run-dir", run, "--no-export")
    assert result.exit_code == 0, result.output
    config, trained = runs.load_run(str(run))
    test = load_split(config, "test")
    codes = posterior_samples(trained, test, seed=5)
    before = float(tf.reduce_mean(trained.prior().log_prob(codes.astype(np.float32))))

    result = invoke("fit-prior", run, "--no-export")
    assert result.exit_code == 0, result.output
    assert "Refitted the mixture prior by EM" in result.output
    refit = json.load(open(run / runs.MIXTURE_REFIT_FILE))
    assert len(refit["prior_em"]) > 1 and refit["codes"] == 2048
    _, model = runs.load_run(str(run))
    after = float(tf.reduce_mean(model.prior().log_prob(codes.astype(np.float32))))
    assert after > before + 0.1
    assert refit["test_elbo_after"] > refit["test_elbo_before"]  # the same fixed noise before and after
    # Its checkpoints predate the refit: training it further would silently drop it, so that is refused.
    result = invoke("fit", "--dataset", tmp_path / "sprites.npz", "--prior", "mog", "--prior-components", 20,
                    "--latent-dim", 4, "--epochs", 3, "--run-dir", run, "--no-export")
    assert result.exit_code == 2 and "would resume from that checkpoint and lose it" in result.output


def test_the_aggregate_posterior_mixture_widens_each_posterior_by_the_held_out_bandwidth():
    """One equally weighted component per example, its scale √(σ² + h²) with h a factor of each dimension's
    spread; the factor is the held-out codes' most likely one, and for codes of N(0, diag(1, 16)) that is
    near a kernel density estimate's rule of thumb (about n^(-1/6) = 0.28 of the spread in 2-D), not an end
    of the grid. Its scores are the tfd mixture's mean log-density."""
    from keras_vae import priors

    rng = np.random.default_rng(3)
    spread = np.array([1.0, 4.0])
    loc, held_out = rng.normal(size=(2000, 2)) * spread, rng.normal(size=(1000, 2)) * spread
    scale = np.full_like(loc, 0.01)
    logits, mixture_loc, mixture_scale, scores = priors.aggregate_posterior_mixture(loc, scale, held_out)
    best = max(scores, key=scores.get)
    assert 0.15 <= best <= 0.5 and scores[best] > scores[min(scores)] + 0.5 and scores[best] > scores[max(scores)]
    np.testing.assert_array_equal(logits, np.zeros(2000))
    np.testing.assert_array_equal(mixture_loc, loc)
    np.testing.assert_allclose(mixture_scale, np.broadcast_to(np.sqrt(0.01**2 + (best * loc.std(axis=0)) ** 2), loc.shape),
                               rtol=1e-12)
    mixture = tfd_mixture(*(tf.constant(a, tf.float64) for a in (logits, mixture_loc, mixture_scale)))
    np.testing.assert_allclose(scores[best], float(tf.reduce_mean(mixture.log_prob(held_out))), rtol=1e-9)


def test_a_mixture_prior_resized_keeps_every_other_weight_and_bounds_the_evaluations_chunks():
    from keras_vae.code_prior import with_mixture_components
    from keras_vae.evaluate import MAX_PRIOR_ENTRIES, samples_per_chunk

    model = make("vae", prior="mog", prior_components=3, latent_dim=4)
    resized = with_mixture_components(model, 7)
    x = images(8)
    np.testing.assert_array_equal(resized.reconstruct(x).numpy(), model.reconstruct(x).numpy())
    assert tuple(resized.prior_loc.shape) == (7, 4) and resized.get_config()["mixture_components"] == 7
    np.testing.assert_array_equal(resized.prior_loc.numpy()[:3], model.prior_loc.numpy())
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(resized))
    assert tuple(restored.prior_loc.shape) == (7, 4)  # the size travels with the model's config
    assert samples_per_chunk(resized, 1000, 100) == 40  # the decoder's bound: 4,000 rows
    huge = with_mixture_components(model, MAX_PRIOR_ENTRIES // 1000)  # 100 × components = 10 × the bound
    assert samples_per_chunk(huge, 1000, 100) == 10


def test_the_fixed_noise_elbo_is_the_evaluations_one_sample_bound():
    from keras_vae.data.splits import Split
    from keras_vae.evaluate import evaluate_model, fixed_noise_elbo

    model = make("vae", prior="mog", prior_components=3)
    split = Split("test", images(40))
    expected = -evaluate_model(model, split, iw_samples=1, batch_size=16, progress=False)["nll_iw"]
    assert fixed_noise_elbo(model, split, batch_size=16) == pytest.approx(expected, rel=1e-6)
    assert fixed_noise_elbo(model, split, batch_size=16) == fixed_noise_elbo(model, split, batch_size=16)


def test_fit_refits_the_mixture_prior_to_the_aggregate_posterior_when_asked(tmp_path):
    """`--prior-refit aggregate`: once training ends, each of the prior's components is a training example's
    posterior (its mean, its scale widened), kept because held-out codes are likelier under it; the model
    file holds it, the run says so, and (the checkpoints hold the trained mixture) the run can be trained
    further, refitting again. `fit-prior --method aggregate` makes the same mixture of a finished run, which
    is then not kept: held-out codes are no likelier under it."""
    from keras_vae.codes import posterior_parameters
    from keras_vae.data import datasets
    from keras_vae.data.splits import load_split

    data = datasets.load_sprites(size=28, num_train=2048, num_test=512, seed=0)
    np.savez(tmp_path / "sprites.npz", x=data.x_train, x_test=data.x_test)
    run = tmp_path / "run"
    flags = ["--dataset", tmp_path / "sprites.npz", "--prior", "mog", "--prior-components", 200, "--latent-dim", 4,
             "--run-dir", run, "--no-export"]
    result = invoke("fit", *flags, "--epochs", 2, "--prior-refit", "aggregate")
    assert result.exit_code == 0, result.output
    # 2,048 training codes, a tenth held out: one component for each of the other 1,844
    assert "Refitted the mixture prior (aggregate, 1844 components) to 2048 training codes" in result.output
    assert "with the refitted prior" in result.output and "prior refit" in result.output  # the summary, the timings
    record = json.load(open(run / runs.FIT_REFIT_FILE))
    scores = {float(factor): value for factor, value in record["history"]["prior_aggregate"].items()}
    factor = max(scores, key=scores.get)
    assert record["refitted"] and scores[factor] - record["history"]["trained_mixture"] >= 1e-4  # why it was kept
    config, model = runs.load_run(str(run))
    mean, spread = posterior_parameters(model, load_split(config, "train"))
    prior = model.prior().components_distribution.distribution
    loc, scale = prior.loc.numpy(), prior.scale.numpy()
    distance = np.abs(loc[:, None, :] - mean[None]).max(-1)  # [components, training examples]
    nearest = distance.argmin(1)
    np.testing.assert_allclose(distance.min(1), 0, atol=1e-5)  # every component sits on a training code
    assert len(set(nearest)) > 1800  # as many different examples (identical small sprites share a code)
    assert model.get_config()["mixture_components"] == 1844 and config.prior_components == 200  # trained with 200
    # each its posterior, widened by the chosen fraction of each dimension's spread over them
    np.testing.assert_allclose(scale, np.sqrt(spread[nearest] ** 2 + (factor * loc.std(axis=0)) ** 2), rtol=2e-3)
    np.testing.assert_allclose(model.prior().mixture_distribution.probs_parameter().numpy(), 1 / 1844, rtol=1e-4)
    assert not (run / runs.MIXTURE_REFIT_FILE).exists()
    result = invoke("fit", *flags, "--epochs", 3, "--prior-refit", "aggregate")
    assert result.exit_code == 0 and "Resuming from epoch 2" in result.output, result.output
    assert "prior refit" in result.output  # it refitted again (kept or not, as the held-out codes say)

    # fit-prior's refit of the same codes is the same mixture, which held-out codes do not prefer: kept as is.
    result = invoke("fit-prior", run, "--method", "aggregate", "--no-export")
    assert result.exit_code == 0 and "no likelier under the aggregate posterior" in result.output, result.output
    assert not (run / runs.MIXTURE_REFIT_FILE).exists()


@pytest.mark.parametrize("name", model_names())
def test_every_model_scores_8_bit_images_under_the_logistic_mixture(name):
    """Every decoder emits the mixture's parameters (K (1 + 2C) per pixel), not one number per channel:
    its reconstruction loss is a −log p over the 256 levels, finite per image, and training lowers it."""
    model = make(name, likelihood="logistic_mixture", binarize="none")
    x, y = np.round(images(32) * 255) / 255, labels(32)  # 8-bit values
    given = {"y": tf.constant(y)} if model.uses_labels else {}
    before = model.compute_terms(tf.constant(x), **given)["reconstruction_loss"].numpy()
    assert before.shape == (32,) and np.isfinite(before).all()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    after = model.compute_terms(tf.constant(x), **given)["reconstruction_loss"].numpy()
    assert after.mean() < before.mean()
    mean = model.reconstruct(x[:4], labels(4) if model.uses_labels else None).numpy()
    assert mean.shape == (4, 28, 28, 1) and 0 <= mean.min() and mean.max() <= 1
