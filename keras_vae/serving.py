"""The serving signatures of an exported model.

Every signature takes and returns named tensors (never distributions) and
uses core TensorFlow ops only, so TF Serving's C++ loader, or any process
that cannot import tensorflow_probability, runs it.

| signature                     | inputs                          | outputs                         |
|-------------------------------|---------------------------------|---------------------------------|
| serving_default, reconstruct  | x [B, H, W, C] float32 in [0,1] | x_mean [B, H, W, C], z_mean [B, L] |
| encode                        | x                               | mean, stddev, z [B, L]          |
| decode                        | z [B, L] float32                | x_mean                          |
| sample                        | num_samples, seed (int32 scalars) [, temperature] | x_mean, z     |
| score                         | x                               | elbo [B], log_px_iw [B]         |

A conditional model (cvae) adds `y` int32 [B] to x/z inputs and a scalar `y`
to `sample`; a model that samples at a temperature (`nvae`) adds a float32 scalar `temperature` to
`sample` (its noise is N(0, T² I)); the discrete-code models' `encode`/`decode` use code indices (`code_map_signatures`).
"""

import tensorflow as tf

from keras_vae import losses

SCORE_SAMPLES = 16  # importance samples in `score`; fixed so that a score is reproducible
MAX_SAMPLES = 1024  # default cap on `sample`'s num_samples (keras-vae export --max-samples N)
MAX_SCORE_BATCH = 256  # examples per `score` request: 256 x 16 importance samples = 4,096 decoder rows
_ENCODE_SEED = (20240101, 0)
_SCORE_SEED = (20240102, 0)


def asserted(tensor, ok, *message):
    """`tensor`, passed on only once the in-graph condition `ok` holds; else an InvalidArgument
    error that prints `message` (strings and the tensors received)."""
    with tf.control_dependencies([tf.debugging.Assert(ok, list(message))]):
        return tf.identity(tensor)


def check_shape(tensor, expected, name, dtype="float32"):
    """A runtime check that `tensor` has shape [B, *expected], naming the expected shape."""
    expected = [int(d) for d in expected]
    message = f"Input `{name}` must have shape [batch, {', '.join(map(str, expected))}] ({dtype})."
    # One assertion on the joined trailing dims, so that a wrong rank and a
    # wrong size fail with the same message (no op sees mismatched shapes).
    actual = tf.strings.reduce_join(tf.strings.as_string(tf.shape(tensor)[1:]), separator=",")
    wanted = ",".join(str(d) for d in expected)
    return asserted(tensor, tf.equal(actual, wanted), message, "Received shape:", tf.shape(tensor))


def check_labels(y, num_classes, name="y", what="class labels"):
    """A runtime check that the labels (or code indices) `y` lie in 0..num_classes-1."""
    message = f"Input `{name}` must hold {what} in 0..{num_classes - 1} (int32)."
    return asserted(y, tf.logical_and(tf.reduce_all(y >= 0), tf.reduce_all(y < num_classes)), message, "Received:", y)


def check_count(num_samples, max_samples=None):
    """A runtime check that `num_samples` lies in 0..max_samples (default MAX_SAMPLES), so no request
    allocates without bound."""
    max_samples = max_samples or MAX_SAMPLES
    message = (f"`num_samples` must lie in 0..{max_samples}: the cap this model was exported with "
               "(keras-vae export --max-samples N).")
    ok = tf.logical_and(num_samples >= 0, num_samples <= max_samples)
    return asserted(num_samples, ok, message, "Received:", num_samples)


def check_temperature(temperature):
    """A runtime check that a sampling temperature is finite and non-negative."""
    ok = tf.logical_and(temperature >= 0, tf.math.is_finite(temperature))
    return asserted(temperature, ok, "`temperature` must be a finite number >= 0.", "Received:", temperature)


def check_score_batch(x):
    """A runtime check that a `score` request holds at most MAX_SCORE_BATCH examples."""
    message = (f"`score` takes at most {MAX_SCORE_BATCH} examples per request (each costs {SCORE_SAMPLES} "
               "decoder passes): split the batch.")
    return asserted(x, tf.shape(x)[0] <= MAX_SCORE_BATCH, message, "Received batch:", tf.shape(x)[0])


def default_signatures(model, max_samples=None):
    """The serving functions of a VAE-like model, keyed by signature name.

    A conditional model (`model.uses_labels`) takes labels too: `y` int32 [B]
    beside `x` or `z`, and `sample` takes one label `y` (a scalar) for all
    its draws.
    """
    image_shape = list(model.image_shape)
    latent_dim = model.code_dim
    x_spec = tf.TensorSpec([None] + image_shape, tf.float32, name="x")
    z_spec = tf.TensorSpec([None, latent_dim], tf.float32, name="z")
    count_specs = [tf.TensorSpec([], tf.int32, name="num_samples"), tf.TensorSpec([], tf.int32, name="seed")]
    labels = [tf.TensorSpec([None], tf.int32, name="y")] if model.uses_labels else []
    label = [tf.TensorSpec([], tf.int32, name="y")] if model.uses_labels else []
    if model.serves_temperature:
        label.append(tf.TensorSpec([], tf.float32, name="temperature"))

    def checked(x, y):
        x = check_shape(x, image_shape, "x")
        return x, (check_labels(y, model.num_classes) if y is not None else None)

    def reconstruct(x, y=None):
        x, y = checked(x, y)
        mean, _ = model.encode(x, y)
        return {"x_mean": model.decode(mean, y), "z_mean": mean}

    def encode(x, y=None):
        x, y = checked(x, y)
        mean, stddev = model.encode(x, y)
        noise = tf.random.stateless_normal(tf.shape(mean), seed=_ENCODE_SEED)
        return {"mean": mean, "stddev": stddev, "z": mean + stddev * noise}

    def decode(z, y=None):
        z = check_shape(z, [latent_dim], "z")
        y = check_labels(y, model.num_classes) if y is not None else None
        return {"x_mean": model.decode(z, y)}

    def sample(num_samples, seed, *rest):
        num_samples = check_count(num_samples, max_samples)
        y = rest[0] if model.uses_labels else None
        if y is not None:
            y = tf.fill([num_samples], check_labels(y, model.num_classes))
        temperature = check_temperature(rest[-1]) if model.serves_temperature else 1.0
        x_mean, z = model.sample(num_samples, seed=seed, temperature=temperature, y=y)
        return {"x_mean": x_mean, "z": z}

    def score(x, y=None):
        x, y = checked(check_score_batch(x), y)
        log_weights, elbo = model.importance_log_weights(x, SCORE_SAMPLES, seed=_SCORE_SEED, y=y)
        return {"elbo": elbo, "log_px_iw": losses.iwae_bound(log_weights)}

    reconstruct = tf.function(reconstruct, input_signature=[x_spec] + labels)
    return {
        "serving_default": reconstruct,
        "reconstruct": reconstruct,
        "encode": tf.function(encode, input_signature=[x_spec] + labels),
        "decode": tf.function(decode, input_signature=[z_spec] + labels),
        "sample": tf.function(sample, input_signature=count_specs + label),
        "score": tf.function(score, input_signature=[x_spec] + labels),
    }


def code_map_signatures(model, max_samples=None):
    """The serving functions of a discrete-code model: its code is one int32 map of indices per level,
    named `indices` for the one level of `vq_vae` and `indices_top`, `indices_bottom` for `vq_vae2`.

    | signature                     | inputs                            | outputs                           |
    |-------------------------------|-----------------------------------|-----------------------------------|
    | serving_default, reconstruct  | x                                 | x_mean, the code maps [B, h, w]   |
    | encode                        | x                                 | the code maps                     |
    | decode                        | the code maps (int32, range-checked) | x_mean                         |
    | sample                        | num_samples, seed                 | x_mean, the code maps (from the priors) |
    | score                         | x                                 | elbo, log_px_iw (equal: q is a point mass) |

    A conditional model takes `y` besides (one label for `sample`).
    """
    image_shape = list(model.image_shape)
    x_spec = tf.TensorSpec([None] + image_shape, tf.float32, name="x")
    names = {level: model.code_name(level) for level in model.levels}
    code_specs = [tf.TensorSpec([None, *model.grids[level]], tf.int32, name=names[level]) for level in model.levels]
    # A conditional model (`vq_vae --condition speaker`) takes labels: y int32 [B] beside x or the code maps
    # (decode with another speaker's y converts the voice), one y for all of `sample`'s draws.
    labels = [tf.TensorSpec([None], tf.int32, name="y")] if model.uses_labels else []
    label = [tf.TensorSpec([], tf.int32, name="y")] if model.uses_labels else []

    def split(args):
        """(the other inputs, the checked labels or None)."""
        if not model.uses_labels:
            return args, None
        return args[:-1], check_labels(args[-1], model.num_classes)

    def named(codes):
        return {names[level]: codes[level] for level in model.levels}

    @tf.function(input_signature=[x_spec] + labels)
    def reconstruct(*args):
        (x,), y = split(args)
        codes = model.encode_indices(check_shape(x, image_shape, "x"))
        return {"x_mean": model.decode_indices(codes, y), **named(codes)}

    @tf.function(input_signature=[x_spec])
    def encode(x):
        return named(model.encode_indices(check_shape(x, image_shape, "x")))

    @tf.function(input_signature=code_specs + labels)
    def decode(*args):
        maps, y = split(args)
        codes = {}
        for level, indices in zip(model.levels, maps):
            indices = check_shape(indices, model.grids[level], names[level], "int32")
            codes[level] = check_labels(indices, model.num_codes, names[level], "code indices")
        return {"x_mean": model.decode_indices(codes, y)}

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="num_samples"),
                                  tf.TensorSpec([], tf.int32, name="seed")] + label)
    def sample(*args):
        (num_samples, seed), y = split(args)
        num_samples = check_count(num_samples, max_samples)
        x_mean, codes = model.sample(num_samples, seed=seed, y=None if y is None else tf.fill([num_samples], y))
        return {"x_mean": x_mean, **named(codes)}

    @tf.function(input_signature=[x_spec] + labels)
    def score(*args):
        (x,), y = split(args)
        x = check_shape(check_score_batch(x), image_shape, "x")
        _, elbo = model.importance_log_weights(x, 1, seed=_SCORE_SEED, y=y)
        return {"elbo": elbo, "log_px_iw": elbo}

    return {"serving_default": reconstruct, "reconstruct": reconstruct, "encode": encode, "decode": decode,
            "sample": sample, "score": score}
