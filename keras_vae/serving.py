"""The serving signatures of an exported model.

Every signature takes and returns named tensors (never distributions) and
uses core TensorFlow ops only, so TF Serving's C++ loader, or any process
that cannot import tensorflow_probability, runs it.

| signature                     | inputs                          | outputs                         |
|-------------------------------|---------------------------------|---------------------------------|
| serving_default, reconstruct  | x [B, H, W, C] float32 in [0,1] | x_mean [B, H, W, C], z_mean [B, L] |
| encode                        | x                               | mean, stddev, z [B, L]          |
| decode                        | z [B, L] float32                | x_mean                          |
| sample                        | num_samples, seed (int32 scalars) | x_mean, z                     |
| score                         | x                               | elbo [B], log_px_iw [B]         |
"""

import tensorflow as tf

from keras_vae import losses

SCORE_SAMPLES = 16  # importance samples in `score`; fixed so that a score is reproducible
_ENCODE_SEED = (20240101, 0)
_SCORE_SEED = (20240102, 0)


def check_shape(tensor, expected, name):
    """A runtime check that `tensor` has shape [B, *expected], naming the expected shape."""
    expected = [int(d) for d in expected]
    message = (
        f"Input `{name}` must have shape [batch, {', '.join(map(str, expected))}] "
        "(float32)."
    )
    # One assertion on the joined trailing dims, so that a wrong rank and a
    # wrong size fail with the same message (no op sees mismatched shapes).
    actual = tf.strings.reduce_join(tf.strings.as_string(tf.shape(tensor)[1:]), separator=",")
    wanted = ",".join(str(d) for d in expected)
    with tf.control_dependencies([tf.debugging.Assert(tf.equal(actual, wanted), [message, "Received shape:", tf.shape(tensor)])]):
        return tf.identity(tensor)


def default_signatures(model):
    """The serving functions of a VAE-like model, keyed by signature name."""
    image_shape = list(model.image_shape)
    latent_dim = model.latent_dim
    x_spec = tf.TensorSpec([None] + image_shape, tf.float32, name="x")
    z_spec = tf.TensorSpec([None, latent_dim], tf.float32, name="z")

    @tf.function(input_signature=[x_spec])
    def reconstruct(x):
        x = check_shape(x, image_shape, "x")
        mean, _ = model.encode(x)
        return {"x_mean": model.decode(mean), "z_mean": mean}

    @tf.function(input_signature=[x_spec])
    def encode(x):
        x = check_shape(x, image_shape, "x")
        mean, stddev = model.encode(x)
        noise = tf.random.stateless_normal(tf.shape(mean), seed=_ENCODE_SEED)
        return {"mean": mean, "stddev": stddev, "z": mean + stddev * noise}

    @tf.function(input_signature=[z_spec])
    def decode(z):
        z = check_shape(z, [latent_dim], "z")
        return {"x_mean": model.decode(z)}

    @tf.function(
        input_signature=[
            tf.TensorSpec([], tf.int32, name="num_samples"),
            tf.TensorSpec([], tf.int32, name="seed"),
        ]
    )
    def sample(num_samples, seed):
        tf.debugging.assert_non_negative(num_samples, message="`num_samples` must be >= 0.")
        x_mean, z = model.sample(num_samples, seed=seed)
        return {"x_mean": x_mean, "z": z}

    @tf.function(input_signature=[x_spec])
    def score(x):
        x = check_shape(x, image_shape, "x")
        log_weights, elbo = model.importance_log_weights(x, SCORE_SAMPLES, seed=_SCORE_SEED)
        return {"elbo": elbo, "log_px_iw": losses.iwae_bound(log_weights)}

    return {
        "serving_default": reconstruct,
        "reconstruct": reconstruct,
        "encode": encode,
        "decode": decode,
        "sample": sample,
        "score": score,
    }
