"""VQ-VAE-2 (Razavi, van den Oord & Vinyals 2019): two levels of discrete codes, decoded together.

    x ─ bottom encoder (÷4) ─ h_b ─ top encoder (÷2) ─ z_top ─ quantize ─ c_top, q_top
                               └──────── concat( h_b, top decoder(q_top) ) ─ z_bottom ─ quantize ─ c_bottom, q_bottom
    decoder( concat( upsample(q_top), q_bottom ) ) ─ p(x | c_top, c_bottom)

The top map (H/8 × W/8) carries global structure, the bottom map (H/4 × W/4)
detail given the top. Inputs whose sides are not multiples of 8 are padded
with zeros (centred) and the padding is cropped from the decoder's output.
Encoders and decoders are the paper's: strided 4×4 convolutions and residual
stacks (ReLU, 3×3 to `residual_channels`, ReLU, 1×1 back to `channels`).
Quantization, the EMA codebooks (the default here, as in the paper), dead-
code restarts, FSQ, the bound and sampling are `CodeMapAutoencoder`'s;
`fit-prior` trains a gated PixelCNN over the top maps and one over the bottom
maps conditioned on the top codes.
"""


import keras
import tensorflow as tf

from keras_vae.hparams import Hyperparameter as H
from keras_vae.models import register_model
from keras_vae.models.vq import CodeMapAutoencoder


def relu_after_add(h):
    """max(h, 0) spelled without a Relu op: grappler's remapper fails to fuse Conv2D + Add + Relu when the
    Add also feeds the next residual block, and logs an error for every training graph."""
    return keras.layers.Maximum()([h, keras.ops.zeros_like(h)])


def residual_stack(h, channels, residual_channels, layers):
    """`layers` blocks of h + 1×1(ReLU(3×3(ReLU(h)))), then a ReLU."""
    for _ in range(layers):
        r = keras.layers.Conv2D(residual_channels, 3, padding="same")(relu_after_add(h))
        h = keras.layers.Add()([h, keras.layers.Conv2D(channels, 1)(keras.layers.ReLU()(r))])
    return relu_after_add(h)


def down(h, channels, activation="relu"):
    return keras.layers.Conv2D(channels, 4, strides=2, padding="same", activation=activation)(h)


def up(h, channels, activation="relu"):
    return keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same", activation=activation)(h)


def padding_of(image_shape, factor=8):
    """((top, bottom), (left, right)) zeros that make H and W multiples of `factor`."""
    pads = []
    for size in image_shape[:2]:
        extra = -size % factor
        pads.append((extra // 2, extra - extra // 2))
    return tuple(pads)


def vq_vae2_networks(image_shape, vector_dim, channels, residual_channels, residual_layers, output_channels=None):
    """(encoder, bottom head, decoder):

    - encoder: x [B, H, W, C] -> (h_b [B, H'/4, W'/4, channels], z_top [B, H'/8, W'/8, D]);
    - bottom head: (h_b, q_top) -> z_bottom [B, H'/4, W'/4, D];
    - decoder: (q_top, q_bottom) -> the likelihood's parameters per pixel [B, H, W, output_channels]
      (default C);

    where H', W' are H, W padded to multiples of 8.
    """
    pads = padding_of(image_shape)
    height, width = (size + sum(pad) for size, pad in zip(image_shape[:2], pads))
    top_grid, bottom_grid = (height // 8, width // 8), (height // 4, width // 4)
    stack = dict(channels=channels, residual_channels=residual_channels, layers=residual_layers)

    x = keras.Input(image_shape, name="x")
    h = keras.layers.ZeroPadding2D(pads)(x)
    h = down(down(h, channels // 2), channels)
    h_bottom = residual_stack(keras.layers.Conv2D(channels, 3, padding="same")(h), **stack)
    h = keras.layers.Conv2D(channels, 3, padding="same")(down(h_bottom, channels // 2))
    z_top = keras.layers.Conv2D(vector_dim, 1, name="z_top")(residual_stack(h, **stack))
    encoder = keras.Model(x, [h_bottom, z_top], name="encoder")

    features = keras.Input((*bottom_grid, channels), name="h_bottom")
    q_top = keras.Input((*top_grid, vector_dim), name="q_top")
    h = residual_stack(keras.layers.Conv2D(channels, 3, padding="same")(q_top), **stack)
    h = keras.layers.Concatenate()([features, up(h, vector_dim, None)])
    z_bottom = keras.layers.Conv2D(vector_dim, 1, name="z_bottom")(h)
    bottom_head = keras.Model([features, q_top], z_bottom, name="bottom_head")

    q_top_in = keras.Input((*top_grid, vector_dim), name="q_top")
    q_bottom = keras.Input((*bottom_grid, vector_dim), name="q_bottom")
    h = keras.layers.Concatenate()([up(q_top_in, vector_dim, None), q_bottom])
    h = residual_stack(keras.layers.Conv2D(channels, 3, padding="same")(h), **stack)
    h = up(up(h, channels // 2), output_channels or image_shape[-1], None)
    outputs = keras.layers.Cropping2D(pads)(h)
    decoder = keras.Model([q_top_in, q_bottom], outputs, name="decoder")
    return encoder, bottom_head, decoder


@register_model("vq_vae2")
@keras.saving.register_keras_serializable(package="keras_vae")
class VQVAE2(CodeMapAutoencoder):
    """VQ-VAE-2: a top code map at H/8 and a bottom one at H/4, each with its own codebook and prior.

    Args (besides `CodeMapAutoencoder`'s):
        channels: width of the encoders and decoders.
        residual_channels: width inside each residual block.
        residual_layers: residual blocks per stack.
    """

    hyperparameters = (
        H("vq_ema", bool, True, "EMA codebook updates instead of the codebook loss (appendix A.1)."),
        H("channels", int, 128, "Channels of vq_vae2's encoders and decoders.", minimum=2,
          reference="Razavi et al. 2019"),
        H("residual_channels", int, 32, "Channels inside vq_vae2's residual blocks.", minimum=1),
        H("residual_layers", int, 2, "Residual blocks per stack of vq_vae2.", minimum=0),
    )
    unused_hyperparameters = ("architecture",)
    levels = ("top", "bottom")

    def code_grids(self):
        pads = padding_of(self.image_shape)
        height, width = (size + sum(pad) for size, pad in zip(self.image_shape[:2], pads))
        return {"top": (height // 8, width // 8), "bottom": (height // 4, width // 4)}

    def prior_condition(self, level):
        return "top" if level == "bottom" else None

    def build_networks(self):
        encoder, self.bottom_head, decoder = vq_vae2_networks(
            self.image_shape, self.vector_dim, self.channels, self.residual_channels, self.residual_layers,
            self.decoder_channels())
        return encoder, decoder

    def quantize_levels(self, x, training=False, seed=None):
        seeds = [None, None] if seed is None else [tf.random.experimental.stateless_fold_in(seed, i) for i in (0, 1)]
        h_bottom, z_top = self.encoder(x, training=training)
        z_top = tf.cast(z_top, tf.float32)
        top = dict(self.quantizer_top(z_top, training=training, seed=seeds[0]), vectors=z_top)
        z_bottom = tf.cast(self.bottom_head([h_bottom, top["quantized"]], training=training), tf.float32)
        bottom = dict(self.quantizer_bottom(z_bottom, training=training, seed=seeds[1]), vectors=z_bottom)
        return {"top": top, "bottom": bottom}

    reads_signals = False  # its networks are 2-D

    def decode_quantized(self, quantized, training=False, y=None):
        return self.decoder([quantized["top"], quantized["bottom"]], training=training)
