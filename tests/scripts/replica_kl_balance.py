"""Runs in its own process (the CPU must be split before TensorFlow starts).

NVAE's KL balancing, and the free-bits floor, on two mirrored CPU replicas, each holding part of a batch
whose parts use the groups very differently (in uneven parts), against the same batch on one device; and an
exemplar prior's memory, stored from the replicas' parts. Prints them as JSON.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_vae.distribute import split_cpu  # noqa: E402
from keras_vae.losses import free_bits_kl  # noqa: E402
from keras_vae.models.nvae import balanced_kl  # noqa: E402
from keras_vae.priors import add_exemplar_memory, remember_exemplars  # noqa: E402

split_cpu(2)
SIZES = [10, 10, 40]
# Replica 0's half puts its KL in group 0, replica 1's in group 2.
KL = np.array([[9.0, 1.0, 0.5], [7.0, 2.0, 0.5], [0.5, 1.0, 30.0], [1.0, 3.0, 50.0]], np.float32)

one_device = balanced_kl(tf.constant(KL), SIZES, tf.constant(True)).numpy()

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
# Uneven parts (3 rows and 1), as a last batch can split: the weights are the whole batch's, not a mean of means.
halves = strategy.experimental_distribute_values_from_function(
    lambda context: tf.constant(KL[:3] if context.replica_id_in_sync_group == 0 else KL[3:]))
per_replica = strategy.run(tf.function(lambda kl: balanced_kl(kl, SIZES, tf.constant(True))), args=(halves,))
two_replicas = np.concatenate([t.numpy() for t in strategy.experimental_local_results(per_replica)])


# Free bits at 2 nats: group 1's batch mean is 1.75 (floored) but replica 1's part has 3.0; group 0's is
# 4.375 (not floored) but replica 1's part has 1.0. The gradient says which groups a replica floored.
def floor_gradient(kl):
    with tf.GradientTape() as tape:
        tape.watch(kl)
        value = free_bits_kl(kl, 2.0)
    return tape.gradient(value, kl)


one_device_floored = (floor_gradient(tf.constant(KL)).numpy() == 0).all(0)
gradients = strategy.run(tf.function(floor_gradient), args=(halves,))
replicas_floored = [(t.numpy() == 0).all(0).tolist() for t in strategy.experimental_local_results(gradients)]

# An exemplar memory of 6 codes, stored from parts of 3 rows (replica 0: 1, 2, 3) and 1 row (replica 1: 9): every
# replica's copy must hold the whole batch, in replica order, and the same slot.
with strategy.scope():
    holder = keras.layers.Layer()
    add_exemplar_memory(holder, 6, 2)
parts = strategy.experimental_distribute_values_from_function(
    lambda context: tf.constant([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]) if context.replica_id_in_sync_group == 0
    else tf.constant([[9.0, 9.0]]))
strategy.run(tf.function(lambda codes: remember_exemplars(holder, codes)), args=(parts,))
memory = [t.numpy()[:, 0].tolist() for t in strategy.experimental_local_results(holder.prior_loc.value)]
slots = [int(t.numpy()) for t in strategy.experimental_local_results(holder.exemplar_slot.value)]
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "one_device": one_device.tolist(),
                  "two_replicas": two_replicas.tolist(), "floored_one_device": one_device_floored.tolist(),
                  "floored_replicas": replicas_floored, "exemplar_memory": memory, "exemplar_slot": slots}))
