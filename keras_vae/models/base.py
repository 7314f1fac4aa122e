"""The base of every model that encodes to a code and decodes from it, and the one training loop.

`Autoencoder` holds what all models share: the encoder/decoder networks of
the chosen architecture, the likelihood p(x|z), the noise seed, the metric
trackers, the training loop (`train_step`/`test_step`), `encode`/`decode`/
`reconstruct`/`sample`, the serving signatures and `get_config`. Two
families derive from it as siblings:

- the continuous-latent VAEs (`vae.VAE`, with a posterior q(z|x) and a prior
  p(z)), and the deterministic autoencoders (`ae.AE`);
- the discrete-code models (`vq.CodeMapAutoencoder`: `vq_vae`, and `vq_vae2` in
  `vq_vae2.py`).

A model declares its hyperparameters once, as `hyperparameters` (a tuple of
`keras_vae.hparams.Hyperparameter`), and inherits its parent's; a variant
that does not use an inherited one lists it in `unused_hyperparameters`.
The constructor takes them as keyword arguments, validates them and stores
them as attributes; `get_config` returns them.

`train_step` minimizes `objective(terms, beta)`, by default
mean(reconstruction_loss) + `regularizer(terms, beta)`. A variant overrides
the one method that differs: `compute_terms` (what the model computes),
`regularizer` (what is added to the reconstruction loss) or `objective`.
A regularizer may add batch-level values to `terms` (e.g. the total
correlation) to have them logged with the other metrics.
"""

import functools
import inspect

import keras
import tensorflow as tf

from keras_vae.distribute import reduce_over_replicas, replica_id
from keras_vae.distributions import (BernoulliLikelihood, CategoricalLikelihood, GaussianLikelihood,
                                     LogisticMixtureLikelihood, padding_mask)
from keras_vae.errors import UserError
from keras_vae.hparams import Hyperparameter as H
from keras_vae.networks import build_networks
from keras_vae.pixel_decoder import CONDITION_CHANNELS, PixelCNNLikelihood

LIKELIHOODS = ("bernoulli", "gaussian", "categorical", "logistic_mixture")
LOGISTIC_COMPONENTS = 10  # components of a discretized logistic mixture (Salimans et al. 2017; NVAE)
CATEGORICAL_CLASSES = 256  # the levels of a categorical likelihood (8-bit μ-law audio)
DECODERS = ("factorized", "pixelcnn")
PHASES = ("joint", "inference", "generative")  # what a training step may update (`phase_variables`)


def num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def elbo_terms(reconstruction_loss, kl, kl_per_dim=None, **extra):
    """The per-example ELBO terms (Kingma & Welling 2014, eq. 3), in nats:

        ELBO(x) = E_q(z|x)[log p(x|z)] − KL(q(z|x) ‖ p(z)) = −reconstruction_loss − kl.

    Args:
        reconstruction_loss: −log p(x|z) [B].
        kl: [B].
        kl_per_dim: [B, L], or None when the KL has no per-dimension form.
        **extra: more terms to log (per-example [B] or batch-level scalars).
    """
    return {"reconstruction_loss": reconstruction_loss, "kl": kl, "elbo": -(reconstruction_loss + kl),
            "kl_per_dim": kl_per_dim, **extra}


def rebuilt(model, own_weights, **changes):
    """A copy of `model` rebuilt from its config with `changes`, every weight but those that `own_weights(m)`
    lists for a model m (the part the change replaces) set to the model's own."""
    with model.distribute_strategy.scope():
        copy = model.__class__.from_config(dict(model.get_config(), **changes))
    skip = (lambda m: {id(v) for v in own_weights(m)})
    source = [v for v in model.weights if id(v) not in skip(model)]
    target = [v for v in copy.weights if id(v) not in skip(copy)]
    if [tuple(v.shape) for v in source] != [tuple(v.shape) for v in target]:
        raise RuntimeError(f"Rebuilding the {model.name} model with {changes} changed more than the weights it "
                           "replaces.")
    for old, new in zip(source, target):
        new.assign(old)
    return copy


@keras.saving.register_keras_serializable(package="keras_vae")
class Autoencoder(keras.Model):
    """The shared base: networks, likelihood, training loop, code helpers, signatures.

    Args:
        image_shape: (H, W, C) of the data.
        seed: seeds the model's noise (reparameterization, corruption).
        **hyperparameters: the class's declared hyperparameters
            (`all_hyperparameters()`); the others go to `keras.Model`.

    Call arguments:
        x: images [B, H, W, C] in [0, 1].

    Returns:
        The reconstruction [B, H, W, C] (a tensor, never a distribution), so
        `predict` gives reconstructions.
    """

    hyperparameters = (
        H("latent_dim", int, 16, "Size of the latent code (for vq_vae: code positions).", minimum=1),
        H("architecture", str, "mlp", "Encoder/decoder design: mlp, mlp-200-tanh (Burda et al. 2016), mlp-gated (Tomczak & Welling 2018), conv, conv-small, conv-64, broadcast-64 (a spatial broadcast decoder, Watters et al. 2019); conv1d for signals [T, C]."),
        H("likelihood", str, "bernoulli", "p(x|z): bernoulli (binary pixels), gaussian, categorical over 256 "
          "levels in [-1, 1] (μ-law waveforms), or logistic_mixture (a discretized mixture of 10 logistics over "
          "8-bit values, Salimans et al. 2017).", choices=LIKELIHOODS, attribute="likelihood_name",
          reference="van den Oord et al. 2016"),
        H("likelihood_scale", float, None, "Fixed std of a Gaussian likelihood (default: learned per channel).",
          minimum=0, open_minimum=True, nullable=True),
        H("decoder", str, "factorized", "The likelihood's form: factorized over the pixels (the architecture's "
          "decoder gives each pixel's parameters) or pixelcnn (a gated PixelCNN over binary pixels in raster order, conditioned "
          "on the feature map the architecture's decoder makes of z).", choices=DECODERS, attribute="decoder_name",
          reference="Gulrajani et al. 2017"),
        H("decoder_layers", int, 6, "Gated layers of the pixelcnn decoder (its receptive field grows by a row "
          "per layer).", minimum=1),
        H("decoder_filters", int, 32, "Channels of the pixelcnn decoder's streams.", minimum=1),
        H("decoder_dropout", float, 0.0, "Training-time rate at which the pixelcnn decoder's earlier pixels are "
          "withheld, so that it must read z.", minimum=0, maximum=1, open_maximum=True,
          reference="Bowman et al. 2016"),
    )
    unused_hyperparameters = ()

    has_elbo = True  # False for the plain autoencoders: no likelihood bound to evaluate
    uses_labels = False  # True for conditional models: batches are (x, y) and y reaches the networks
    label_name = "label"  # which labels a conditional model reads: the dataset's y, or a factor such as "speaker"
    continuous_code = True  # False for a discrete code (VQ-VAE): no traversals or manifolds
    reads_signals = True  # False for models whose networks need images [H, W, C], not signals [T, C]
    serves_temperature = False  # True: the exported `sample` takes a `temperature` (its code noise N(0, T² I))
    run_defaults = {}  # run settings (optimizer, schedule) this model trains with unless told otherwise

    @classmethod
    def declared_hyperparameters(cls):
        """{name: Hyperparameter} declared by this model or its ancestors, used or not."""
        return {h.name: h for klass in reversed(cls.__mro__) for h in vars(klass).get("hyperparameters", ())}

    @classmethod
    def all_hyperparameters(cls):
        """{name: Hyperparameter} this model takes: its own and its ancestors', less the unused."""
        declared = {}
        for klass in reversed(cls.__mro__):
            declared.update((h.name, h) for h in vars(klass).get("hyperparameters", ()))
            for name in vars(klass).get("unused_hyperparameters", ()):
                declared.pop(name, None)
        return declared

    @classmethod
    def resolve_hyperparameters(cls, values, total_steps):
        """Constructor values from configured ones; a schedule that defaults to part of a run of
        `total_steps` optimizer steps gets its number here."""
        return dict(values)

    @classmethod
    def from_fit_config(cls, config, image_shape, num_classes=0, total_steps=None):
        """The model a `FitConfig` describes; `num_classes` goes to the models that can read labels (those whose
        constructor takes it)."""
        values = cls.resolve_hyperparameters(config.model_hyperparameters(), total_steps)
        extra = {"num_classes": int(num_classes)} if "num_classes" in inspect.signature(cls.__init__).parameters else {}
        return cls(image_shape=image_shape, seed=config.seed, **values, **extra)

    def __init__(self, image_shape, seed=0, **kwargs):
        declared = self.all_hyperparameters()
        values = {name: h.check(kwargs.pop(name, h.default)) for name, h in declared.items()}
        super().__init__(**kwargs)
        # An inherited hyperparameter the model does not use keeps its declared default, so shared code
        # reads one value (e.g. a VQ-VAE's factorized decoder).
        for name, h in self.declared_hyperparameters().items():
            setattr(self, h.attribute_name, values[name] if name in values else h.default)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.seed = int(seed)
        self.encoder, self.decoder = self.build_networks()
        self.likelihood_layer = self.build_likelihood_layer()
        self.seed_generator = keras.random.SeedGenerator(seed, name="noise_seed")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names()}
        self.built = True

    # ----------------------------------------------------------- structure
    @property
    def code_dim(self):
        """The size of the code that `encode` returns and `decode` takes (L here)."""
        return self.latent_dim

    def encoder_outputs(self):
        """How many numbers the encoder network produces per example."""
        return self.latent_dim

    def decoder_channels(self):
        """The channels per pixel the decoder network outputs: the image's, a pixelcnn's condition, or
        a categorical likelihood's logits (K per channel)."""
        if self.decoder_name == "pixelcnn":
            return CONDITION_CHANNELS
        if self.likelihood_name == "categorical":
            return self.image_shape[-1] * CATEGORICAL_CLASSES
        if self.likelihood_name == "logistic_mixture":
            return LOGISTIC_COMPONENTS * (1 + 2 * self.image_shape[-1])
        return self.image_shape[-1]

    def build_networks(self):
        """(encoder, decoder) of the chosen architecture."""
        return build_networks(self.architecture, self.image_shape, self.latent_dim, self.encoder_outputs(),
                              self.decoder_channels())

    def build_likelihood_layer(self):
        if self.decoder_name == "pixelcnn":
            if self.likelihood_name != "bernoulli":
                raise UserError("--decoder pixelcnn models binary pixels: use it with --likelihood bernoulli "
                                f"(and binarized data). Received: --likelihood {self.likelihood_name}.")
            return PixelCNNLikelihood(self.image_shape, self.decoder_layers, self.decoder_filters,
                                      self.decoder_dropout, self.seed, name="likelihood")
        if self.likelihood_name == "bernoulli":
            return BernoulliLikelihood(name="likelihood")
        if self.likelihood_name == "categorical":
            return CategoricalLikelihood(self.image_shape[-1], CATEGORICAL_CLASSES, name="likelihood")
        if self.likelihood_name == "logistic_mixture":
            return LogisticMixtureLikelihood(self.image_shape[-1], LOGISTIC_COMPONENTS, name="likelihood")
        return GaussianLikelihood(self.image_shape[-1], self.likelihood_scale, name="likelihood")

    def encoder_inputs(self, x, y=None):
        """What the encoder network is called on (a conditional model adds the label)."""
        return x

    def decoder_inputs(self, z, y=None):
        """What the decoder network is called on (a conditional model adds the label)."""
        return z

    def metric_names(self):
        return ("loss", "reconstruction_loss")

    @property
    def metrics(self):
        return list(self.trackers.values())

    def noise_seed(self):
        """A fresh stateless seed [2], different on every replica and every call."""
        seed = self.seed_generator.next()
        return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), replica_id())

    def corrupt(self, x, training=False):
        """What the encoder sees of x; the identity here (a denoising model overrides it)."""
        return x

    # ------------------------------------------------------ the code
    def likelihood(self, z, training=False, y=None):
        """p(x|z) for codes z [B, L] (p(x|z, y) for a conditional model)."""
        return self.likelihood_layer(self.decoder(self.decoder_inputs(z, y), training=training), training=training)

    def encode(self, x, y=None):
        """The code of x: (mean, spread), each [B, code_dim], from the model's `posterior_layer`
        (models without one override this)."""
        return self.posterior_layer.parameters(self.encoder(self.encoder_inputs(x, y), training=False))

    def probe_features(self, x, y=None):
        """What the evaluation's probes and unit counts read of x: the code's mean [B, code_dim]."""
        return self.encode(x, y)[0]

    def decode(self, z, y=None):
        """The decoder mean [B, H, W, C] for codes z [B, code_dim]."""
        return self.likelihood_layer.mean(self.decoder(self.decoder_inputs(z, y), training=False))

    def reconstruct(self, x, y=None):
        """The decoder mean at the code's mean, [B, H, W, C]."""
        mean, _ = self.encode(x, y)
        return self.decode(mean, y)

    def sample_codes(self, num_samples, seed, temperature=1.0):
        """Codes [N, code_dim] from N(0, T²I), stateless in `seed` ([2] int64)."""
        return temperature * tf.random.stateless_normal([num_samples, self.code_dim], seed=seed)

    def sample(self, num_samples, seed=0, temperature=1.0, y=None):
        """Draws from the model with stateless noise: returns (x_mean, code).

        The same `seed` gives the same images on every call. `y` (labels, or
        one label for all) is for conditional models.
        """
        seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
        z = self.sample_codes(num_samples, seed, temperature)
        return self.decode(z, y), z

    def code_groups(self):
        """[(name, size)] of the code's parts in its order (a hierarchy's layers), or None for one part;
        `evaluate` reports the KL and active units of each."""
        return None

    def generation_order(self):
        """For a hierarchical model whose whitened code has each group's prior conditioned on the groups drawn
        before it (`decode` forms z_l = μp + σp ε_l top down): the indices into `code_groups()` in the order
        they are drawn, the top of the hierarchy first. None for the others. `keras-vae resample` keeps the
        first k of an image's groups and draws the rest."""
        return None

    def redraw_dropped(self, codes, kept, noise, seed=0):
        """For a hierarchy whose whitened code is not N(0, I) a priori everywhere: `codes` [N, L] with the
        dimensions not `kept` ([L] booleans) redrawn from the prior given the kept ones, with `noise` [N, L]
        (ε of N(0, T² I)) as their Gaussian noise. Here the whitened prior is N(0, I), so `codes` are that
        draw already."""
        return codes

    def prepare_sampling(self, temperature):
        """Called once before `keras-vae sample` draws at `temperature`; nothing here (NVAE readjusts its
        batch-norm statistics)."""

    def call(self, x, training=False):
        return self.reconstruct(x)

    def serving_signatures(self, max_samples=None):
        """The tf.functions exported for TF Serving (see `keras_vae.serving`); `sample` draws at most
        `max_samples` per request (default `serving.MAX_SAMPLES`)."""
        from keras_vae.serving import default_signatures

        return default_signatures(self, max_samples)

    # ---------------------------------------------------------- objective
    def compute_terms(self, x, training=False, y=None):
        """The per-example terms (`elbo_terms`) from one pass over x [B, H, W, C] (labels y [B] or None)."""
        raise NotImplementedError

    def importance_log_weights(self, x, num_samples, seed, y=None):
        """log p(x, z_k) − log q(z_k|x) for k = 1..num_samples: ([K, B], elbo [B])."""
        raise NotImplementedError

    def current_beta(self):
        """The weight of the regularizer at this optimizer step (logged as `beta`)."""
        return tf.constant(1.0, tf.float32)

    def regularizer(self, terms, beta):
        """What the loss adds to the reconstruction loss (a scalar); nothing here."""
        return tf.constant(0.0, tf.float32)

    def objective(self, terms, beta):
        """The scalar loss that training minimizes (a per-example mean)."""
        return tf.reduce_mean(terms["reconstruction_loss"]) + self.regularizer(terms, beta)

    # ------------------------------------------------------ training loop
    @staticmethod
    def unpack(data):
        """(examples, labels or None, padding mask or None) from a batch given as x, (x,), (x, y) or a dict
        with `x` and optionally `y` and `mask` (fixed-length signals, see `distributions.padding_mask`)."""
        if isinstance(data, dict):
            return data["x"], data.get("y"), data.get("mask")
        if isinstance(data, (tuple, list)):
            return data[0], (data[1] if len(data) > 1 else None), None
        return data, None, None

    def losses_and_terms(self, data, training):
        x, y, mask = self.unpack(data)
        with padding_mask(mask):
            terms = self.compute_terms(x, training=training, y=y if self.uses_labels else None)
        beta = self.current_beta()
        return self.objective(terms, beta), terms, beta

    def train_step(self, data, phase=None):
        """One optimizer step on a batch; `phase` (see `PHASES`) restricts the step to part of the model
        and adds the batch's mean loss over all replicas, `batch_loss`, to what it returns."""
        with tf.GradientTape() as tape:
            loss, terms, beta = self.losses_and_terms(data, training=True)
            # The optimizer sums gradients over replicas: scale so the sum is a mean.
            gradient_loss = loss / num_replicas()
            gradient_loss = self.optimizer.scale_loss(gradient_loss)
        variables = self.trainable_variables if phase is None else self.phase_variables(phase)
        gradients = tape.gradient(gradient_loss, variables)
        self.apply_gradients(gradients, variables, phase)
        extra = {} if phase is None else {
            "batch_loss": reduce_over_replicas(loss)}
        return self.update_trackers(loss, terms, beta, extra)

    def apply_gradients(self, gradients, variables, phase=None):
        """One optimizer update of `variables` (a phase's, or all)."""
        self.optimizer.apply(gradients, variables)

    # ------------------------------------------------ training in phases
    def inference_layers(self):
        """The layers of the inference model q(z|x) (what an "inference" phase trains): the encoder here."""
        return [self.encoder]

    def phase_variables(self, phase):
        """The trainable variables a phase updates: "joint" all, "inference" those of `inference_layers`,
        "generative" the rest (decoder, likelihood, a learned prior)."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}. Received: {phase!r}.")
        if phase == "joint":
            return self.trainable_variables
        inference = {id(v) for layer in self.inference_layers() for v in layer.trainable_variables}
        return [v for v in self.trainable_variables if (id(v) in inference) == (phase == "inference")]

    def phase_train_function(self, phase):
        """A compiled train function (as `make_train_function` makes) whose steps update `phase`'s
        variables only; a callback that alternates phases sets it as `train_function` before a step.

        Phases are separate functions, not a `tf.cond` in one: under tf.distribute an optimizer update
        is a synchronization point, which control flow inside a replica's step may not contain."""
        cache = self.__dict__.setdefault("_phase_train_functions", {})
        # A recompiled model gets new functions: they are traced with its optimizer and settings.
        key = (phase, id(self.optimizer), self.steps_per_execution, self.jit_compile)
        if key not in cache:
            self.phase_variables(phase)  # checks the name
            if not self.optimizer.built:  # its slots must cover every variable before a phase updates some
                with self.distribute_strategy.scope():
                    self.optimizer.build(self.trainable_variables)
            cache[key] = self._make_function(functools.partial(self.train_step, phase=phase))
        return cache[key]

    def test_step(self, data):
        loss, terms, beta = self.losses_and_terms(data, training=False)
        return self.update_trackers(loss, terms, beta)

    def update_trackers(self, loss, terms, beta, extra=None):
        """Updates the metric trackers; returns their results and `extra` (more step outputs)."""
        # Batch-level scalars are weighted by the batch size so that every tracker is a per-example mean.
        batch_size = tf.cast(tf.shape(terms["reconstruction_loss"])[0], tf.float32)
        values = {**terms, "loss": loss, "beta": beta}
        for name, tracker in self.trackers.items():
            value = tf.cast(values[name], tf.float32)
            tracker.update_state(value, sample_weight=batch_size if value.shape.rank == 0 else None)
        results = {**{name: tracker.result() for name, tracker in self.trackers.items()}, **(extra or {})}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces step outputs with strategy.reduce("MEAN", v, axis=0)
            # under multi-worker training, which fails on scalars: send [1].
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results

    # -------------------------------------------------------- saving
    def get_config(self):
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), seed=self.seed)
        config.update({name: getattr(self, h.attribute_name) for name, h in self.all_hyperparameters().items()})
        return config
