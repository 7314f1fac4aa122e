"""tf.distribute: 1 vs 2 replicas, multi-worker on localhost, and resuming after kill -9.

Each case runs in fresh processes: a CPU split into logical devices and the
collective ops of multi-worker training must be set before TensorFlow starts.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from keras_vae.data import datasets

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **extra)


def fit_command(*args):
    return [sys.executable, "-m", "keras_vae.cli", "fit", *args]


@pytest.fixture(scope="module")
def sprites_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sprites.npz"
    data = datasets.load_sprites(size=28, num_train=2048, num_test=256, seed=0)
    np.savez(path, x=data.x_train, x_test=data.x_test)
    return str(path)


def test_two_replicas_match_one_device_exactly_when_there_is_no_noise():
    """With z = E_q[z] and SGD, 2 mirrored replicas must reproduce 1 device to float precision.

    If the gradient loss were not divided by the replicas in sync (the optimizer
    sums replica gradients), every update would be twice as large.
    """
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, "replica_equivalence.py")],
                            capture_output=True, text=True, env=env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["max_weight_change"] > 1e-3  # training moved the weights ...
    assert report["max_weight_difference"] < 1e-6  # ... identically on 1 and 2 replicas
    # The reported loss is the global mean, not one replica's (their halves differ).
    np.testing.assert_allclose(report["loss_two"], report["loss_one"], rtol=1e-5)
    # Each replica draws its own noise.
    assert report["replica_seeds"][0] != report["replica_seeds"][1]


def test_mirrored_fit_follows_the_one_device_training_curve(sprites_npz, tmp_path):
    """`keras-vae fit` on 2 CPU replicas vs 1 device, same seed, data order and global batch.

    They differ only in the reparameterization noise (each replica draws its
    own). Tolerance: 3% of each epoch's value. Measured on this data, runs with
    different seeds (noise, order and initialization all different) spread by
    about 1.5% (train loss 251.1–254.8 and 135.6–138.0 at epochs 1–2), so 3%
    is twice the full seed-to-seed range, while a wrong loss scale or a
    one-replica metric would show as a different curve or a failed exact test above.
    Both runs use the same computation (no XLA, which only the one-device run
    would get by default; no β warm-up, the setting the spread was measured in).
    """
    histories = {}
    for name, extra in {"one": ["--strategy", "one"], "two": ["--strategy", "mirrored", "--cpu-replicas", "2"]}.items():
        run_dir = tmp_path / name
        result = subprocess.run(
            fit_command("--dataset", sprites_npz, "--epochs", "2", "--batch-size", "64", "--latent-dim", "4",
                        "--no-export", "--run-dir", str(run_dir), "--jit-compile", "off", "--kl-warmup-steps", "0",
                        *extra),
            capture_output=True, text=True, env=env(), cwd=REPO,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        histories[name] = json.loads((run_dir / "history.json").read_text())
    for key in ("loss", "elbo", "val_elbo", "val_reconstruction_loss"):
        np.testing.assert_allclose(histories["two"][key], histories["one"][key], rtol=0.03, err_msg=key)


def test_fit_prior_trains_under_the_runs_own_strategy(sprites_npz, tmp_path):
    """A vq_vae2 trained on 2 mirrored CPU replicas gets its priors fitted on 2 replicas too."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        fit_command("--dataset", sprites_npz, "--epochs", "1", "--batch-size", "64", "--model", "vq_vae2",
                    "--channels", "16", "--residual-channels", "8", "--codebook-size", "16", "--no-export",
                    "--run-dir", str(run_dir), "--strategy", "mirrored", "--cpu-replicas", "2"),
        capture_output=True, text=True, env=env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    result = subprocess.run([sys.executable, "-m", "keras_vae.cli", "fit-prior", str(run_dir), "--epochs", "1",
                             "--batch-size", "64", "--no-export"], capture_output=True, text=True, env=env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained on 2 replicas" in result.stdout
    history = json.loads((run_dir / "prior_history.json").read_text())
    assert history["prior_bottom"]["val_loss"][-1] < 8 * 8 * np.log(16)  # below the uniform prior


def test_aggressive_encoder_trains_in_phases_on_two_replicas(sprites_npz, tmp_path):
    """--aggressive-encoder under MirroredStrategy: the phases are separate train functions (an optimizer
    update inside a tf.cond would fail there), the decoder takes few of the first epoch's steps, and the
    phase state is saved with the model."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        fit_command("--dataset", sprites_npz, "--epochs", "1", "--batch-size", "64", "--latent-dim", "4",
                    "--aggressive-encoder", "--no-export", "--run-dir", str(run_dir), "--strategy", "mirrored",
                    "--cpu-replicas", "2"),
        capture_output=True, text=True, env=env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((run_dir / "history.json").read_text())
    steps = 2048 // 64  # training batches per epoch (validation is the fixture's test split)
    # Every batch of the aggressive first epoch was one step of a phase, and an inner loop takes at least
    # 10 encoder-only steps before each decoder step (a plain train function would count 28 decoder steps).
    assert history["aggressive"][0] == 1.0
    assert history["encoder_only_steps"][0] + history["decoder_steps"][0] == steps
    assert history["decoder_steps"][0] <= steps // 11 + 1
    assert all(np.isfinite(history["loss"]))
    probe = ("import json, sys, numpy as np\nfrom keras_vae.runs import load_run\n"
             "print(json.dumps([float(v) for v in np.asarray(load_run(sys.argv[1])[1].aggressive_state)]))")
    result = subprocess.run([sys.executable, "-c", probe, str(run_dir)], capture_output=True, text=True, env=env(),
                            cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state[0] == history["aggressive"][-1] and state[1] > -1e8  # I(x; z) measured and kept


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_training_on_two_local_processes(sprites_npz, tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    run_dir, export_dir = tmp_path / "run", tmp_path / "exports"
    processes = [
        subprocess.Popen(
            fit_command("--dataset", sprites_npz, "--strategy", "multi-worker", "--epochs", "2",
                        "--batch-size", "64", "--latent-dim", "4", "--run-dir", str(run_dir),
                        "--export-dir", str(export_dir), "--export-name", "mw"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env=env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})),
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    # Both workers saw the same global metrics; only the chief (worker 0) exported.
    done = [next(line for line in out.splitlines() if line.startswith("Done.")) for out, _ in outputs]
    assert done[0].split(";")[0] == done[1].split(";")[0]
    assert "exported to" in outputs[0][0] and "exported to" not in outputs[1][0]
    assert os.listdir(export_dir / "mw") == ["1"]
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["loss"]) == 2 and history["loss"][1] < history["loss"][0]
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["epoch-001", "epoch-002"]
    assert sorted(os.listdir(run_dir / ".workers" / "worker-1")) == ["epoch-001", "epoch-002", "model.keras"]
    assert os.listdir(run_dir / "logs") and not os.path.exists(run_dir / ".workers" / "worker-1" / "logs")
    loaded = tf.saved_model.load(str(export_dir / "mw" / "1"))
    x = np.load(sprites_npz)["x_test"][:4].astype(np.float32) / 255
    exported = loaded.signatures["serving_default"](x=tf.constant(x))["x_mean"]
    assert exported.shape == (4, 28, 28, 1)
    from keras_vae.runs import load_run

    np.testing.assert_allclose(exported, load_run(str(run_dir))[1].reconstruct(x), atol=1e-5)  # the chief's model


def test_a_killed_run_resumes_from_its_last_complete_epoch(sprites_npz, tmp_path):
    run_dir = tmp_path / "run"
    args = fit_command("--dataset", sprites_npz, "--epochs", "8", "--batch-size", "32", "--latent-dim", "4",
                       "--kl-warmup-steps", "400", "--run-dir", str(run_dir), "--export-dir", str(tmp_path / "exp"))
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=REPO)
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "epoch-002" / "state.json").exists():
        assert process.poll() is None and time.time() < deadline, "training ended before its second epoch"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads(sorted((run_dir / "checkpoints").glob("epoch-*/state.json"))[-1].read_text())
    assert 2 <= done["epoch"] < 8, "the kill came too late to test resuming"
    assert not (run_dir / "history.json").exists() and not (tmp_path / "exp").exists()

    result = subprocess.run(args, capture_output=True, text=True, env=env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from epoch {done['epoch']}" in result.stdout
    assert f"Epoch {done['epoch'] + 1}/8" in result.stdout and "Epoch 1/8" not in result.stdout
    history = json.loads((run_dir / "history.json").read_text())
    assert all(len(values) == 8 for values in history.values())
    assert history["loss"][: done["epoch"]] == done["history"]["loss"]
    # The optimizer's step count survived: β keeps rising through the warm-up instead of restarting.
    assert history["beta"] == sorted(history["beta"]) and history["beta"][-1] == pytest.approx(1.0)
    assert history["beta"][done["epoch"]] > history["beta"][done["epoch"] - 1]
    assert os.listdir(tmp_path / "exp" / "run") == ["1"]


@pytest.mark.parametrize(
    "args, extra_env, message",
    [
        (["--strategy", "multi-worker", "--run-dir", "r"], {}, "needs the TF_CONFIG environment variable"),
        (["--strategy", "multi-worker", "--run-dir", "r"], {"TF_CONFIG": "{oops"}, "TF_CONFIG is not valid JSON"),
        (["--strategy", "mirrored", "--cpu-replicas", "2", "--batch-size", "33"], {}, "must divide evenly over the 2 replicas"),
    ],
)
def test_distribution_mistakes_get_a_message(args, extra_env, message, tmp_path):
    clean = {k: v for k, v in env(**extra_env).items() if k != "TF_CONFIG" or "TF_CONFIG" in extra_env}
    result = subprocess.run(fit_command("--dataset", "sprites28", *args), capture_output=True, text=True,
                            env=clean, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr


def test_every_model_trains_on_two_mirrored_replicas():
    """The family under MirroredStrategy: labels reach the CVAE, the EMA codebook is all-reduced and assigned, an
    NVAE's autoregressive top prior trains with it, and so does a weight-normalized NVAE's whose every KL unit is
    floored (by its fit to the codes alone)."""
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, "mirrored_family.py")],
                            capture_output=True, text=True, env=env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    from keras_vae.models import model_names

    assert set(report) == set(model_names()) | {"vq_vae-ema", "nvae-autoregressive", "nvae-weight-norm-floored"}
    for name, outcome in report.items():
        assert np.all(np.isfinite(outcome["loss"])) and outcome["all_trainable_moved"], name
    assert {"codebook", "ema_counts", "ema_sums"} <= set(report["vq_vae-ema"]["moved_state"])


def test_nvae_kl_balancing_and_free_bits_weigh_the_groups_by_the_global_batch_on_every_replica():
    """Two replicas whose parts of a batch (3 rows and 1) use different groups: each must weigh the groups
    by the whole batch's KL, as one device does, not by its own part or a mean of the parts' means; and each
    must floor (free bits) the groups that the whole batch's means put below the floor, not its own part's.
    An exemplar prior's memory stores the whole batch, the same on every replica."""
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, "replica_kl_balance.py")],
                            capture_output=True, text=True, env=env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    np.testing.assert_allclose(report["two_replicas"], report["one_device"], rtol=1e-6)
    assert report["floored_one_device"] == [False, True, False]
    assert report["floored_replicas"] == [[False, True, False]] * 2
    assert report["exemplar_memory"] == [[1.0, 2.0, 3.0, 9.0, 0.0, 0.0]] * 2 and report["exemplar_slot"] == [4, 4]
