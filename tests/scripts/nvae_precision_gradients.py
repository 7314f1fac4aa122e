"""Runs in its own process: the NVAE's loss gradients under a mixed precision (argv[1]) against float32's, with
the same weights and batch, as `test_precision.py` judges them. Prints as JSON the mixed model's compute dtype,
each variable's relative L2 error, each cancelled batch-norm shift's gradient norm beside its scale's, and the
number of decoder cells. In a fresh process because the honest bfloat16 errors of the smallest gradients vary with
the process's state (see the test)."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from test_precision import cancelled_shifts, gradient_errors, gradients, tiny_nvae  # noqa: E402

precision = sys.argv[1]
keras.utils.set_random_seed(0)
x = tf.constant((np.random.default_rng(0).random((64, 28, 28, 1)) < 0.3).astype(np.float32))
reference, expected = gradients("float32", tiny_nvae, None, x)
mixed, got = gradients(precision, tiny_nvae, reference.get_weights(), x)
norms = {v.path: float(tf.norm(g)) for v, g in zip(reference.trainable_variables, expected)}
cancelled = cancelled_shifts(reference)
decoder_cells = [layer for layer in reference._flatten_layers()
                 if any(isinstance(part, keras.layers.DepthwiseConv2D) for part in getattr(layer, "branch", ()))]
print(json.dumps({"compute_dtype": mixed.dtype_policy.compute_dtype,
                  "errors": gradient_errors(reference.trainable_variables, expected, got),
                  "cancelled": {beta: [norms[beta], norms[gamma]] for beta, gamma in cancelled.items()},
                  "decoder_cells": len(decoder_cells)}))
