"""Choosing a tf.distribute strategy: one device, MirroredStrategy, MultiWorkerMirroredStrategy."""

import json
import os

import tensorflow as tf

from keras_vae.errors import UserError


def replica_id():
    """This replica's index in its sync group (0 outside tf.distribute)."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.constant(0, tf.int32)
    return tf.cast(context.replica_id_in_sync_group, tf.int32)


def reduce_over_replicas(value, op="MEAN"):
    """`value` (a tensor or a nest of them) reduced with `op` ("MEAN" or "SUM") over the replicas in sync
    (the default strategy's single replica reduces to the value itself); in a cross-replica context, where
    there is nothing to reduce over, the value unchanged."""
    context = tf.distribute.get_replica_context()
    return value if context is None else context.all_reduce(op, value)


def gather_over_replicas(values):
    """`values` [B, ...] of every replica in sync, concatenated in replica order along the first axis (parts of
    unequal size allowed), the same on every replica; the values themselves outside tf.distribute."""
    context = tf.distribute.get_replica_context()
    return values if context is None else context.all_gather(values, 0)


def global_batch_mean(values):
    """The mean over the global batch of `values` [B, ...] (per-replica sums and counts all-reduced, so parts
    of unequal size weigh by their rows), as one device would take it; the local mean outside tf.distribute."""
    sums, count = reduce_over_replicas([tf.reduce_sum(values, 0), tf.cast(tf.shape(values)[0], values.dtype)], "SUM")
    return sums / tf.maximum(count, 1)


def split_cpu(num_replicas):
    """Splits the host CPU into `num_replicas` logical devices (before TF initializes them)."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_replicas)]
        )
    except RuntimeError:
        # Already initialized in this process: fine if it was split the same way.
        if len(tf.config.list_logical_devices("CPU")) != num_replicas:
            raise UserError(
                f"--cpu-replicas {num_replicas} must be set before TensorFlow starts; this process "
                f"already runs {len(tf.config.list_logical_devices('CPU'))} CPU devices."
            ) from None


def make_strategy(name="auto", cpu_replicas=0):
    """The strategy `--strategy NAME` asks for.

    `auto`: MirroredStrategy over the GPUs when more than one is visible (or
    over `cpu_replicas` logical CPUs when that is 2 or more), else the default
    single-device strategy.
    """
    if name == "multi-worker":
        # First: the collective ops must be configured before anything starts TF's runtime.
        if "TF_CONFIG" not in os.environ:
            raise UserError(
                "--strategy multi-worker needs the TF_CONFIG environment variable describing the "
                "cluster (see the README's section on clusters)."
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as error:
            raise UserError(f"TF_CONFIG is not valid JSON: {error}.") from None
        if cpu_replicas:
            split_cpu(cpu_replicas)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas:
        split_cpu(cpu_replicas)
    gpus = tf.config.list_logical_devices("GPU")
    cpu_devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if name == "one":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else cpu_devices[0])
    if name == "mirrored" or (name == "auto" and (len(gpus) > 1 or cpu_replicas > 1)):
        devices = [d.name for d in gpus] if gpus else cpu_devices
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """Whether this worker writes logs and exports (always true off a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0
                                                         and "chief" not in resolver.cluster_spec().as_dict())


def worker_scratch(run_dir, strategy):
    """A folder of this worker's own under the run directory, for what only the chief keeps."""
    resolver = strategy.cluster_resolver
    path = os.path.join(run_dir, ".workers", f"{resolver.task_type}-{resolver.task_id}")
    os.makedirs(path, exist_ok=True)
    return path
