"""Floating-point operations per example, counted from a network's layers.

A multiply-add counts as 2 FLOPs. Only the matrix work is counted (Dense,
Conv2D, Conv2DTranspose): activations, biases and the loss are a few percent
at most and are left out, so achieved-GFLOP/s figures are slight underestimates.
A training step costs about 3× the forward pass (forward, then gradients for
activations and for weights).
"""

import keras

TRAINING_MULTIPLIER = 3

def layer_flops(layer):
    """Forward FLOPs per example of one layer (0 for layers without matrix work)."""
    if isinstance(layer, keras.layers.Dense):
        return 2 * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    if isinstance(layer, keras.layers.Conv2DTranspose):
        # Every input pixel scatters a k×k×C_out patch: 2·k²·C_in·C_out per input pixel.
        _, height, width, channels_in = layer.input.shape
        kh, kw = layer.kernel_size
        return 2 * kh * kw * channels_in * layer.filters * height * width
    if isinstance(layer, keras.layers.Conv2D):
        _, height, width, _ = layer.output.shape
        kh, kw = layer.kernel_size
        channels_in = layer.input.shape[-1]
        return 2 * kh * kw * channels_in * layer.filters * height * width
    return 0

def network_flops(network):
    """Forward FLOPs per example of a built Sequential or functional model (nested models too)."""
    total = 0
    for layer in network.layers:
        if isinstance(layer, keras.Model):
            total += network_flops(layer)
        else:
            total += layer_flops(layer)
    return total

def training_flops(*networks):
    """FLOPs per example of one training step through the given networks."""
    return TRAINING_MULTIPLIER * sum(network_flops(n) for n in networks)
