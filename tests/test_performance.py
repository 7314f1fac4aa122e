"""The performance machinery: FLOP counts, the XLA policy and the learning-rate schedule."""

import keras
import pytest
import tensorflow as tf

from keras_vae import flops
from keras_vae.config import FitConfig
from keras_vae.errors import UserError
from keras_vae.models.vae import VAE
from keras_vae.train import has_convolutions, jit_setting, learning_rate


def test_flops_of_the_mlp_are_its_matrix_sizes():
    model = VAE((28, 28, 1), latent_dim=16, architecture="mlp")
    encoder = 2 * (784 * 1024 + 1024 * 1024 + 1024 * 32)
    decoder = 2 * (16 * 1024 + 1024 * 1024 + 1024 * 784)
    assert flops.network_flops(model.encoder) == encoder
    assert flops.network_flops(model.decoder) == decoder
    assert flops.training_flops(model.encoder, model.decoder) == 3 * (encoder + decoder)


def test_flops_of_conv_small_count_every_convolution():
    model = VAE((28, 28, 1), latent_dim=16, architecture="conv-small")
    encoder = 2 * (9 * 1 * 32 * 14 * 14 + 9 * 32 * 64 * 7 * 7 + 3136 * 16 + 16 * 32)
    # Transposed convolutions: 2·k²·C_in·C_out per *input* pixel.
    decoder = 2 * (16 * 3136 + 9 * 64 * 64 * 7 * 7 + 9 * 64 * 32 * 14 * 14 + 9 * 32 * 1 * 28 * 28)
    assert flops.network_flops(model.encoder) == encoder
    assert flops.network_flops(model.decoder) == decoder


def test_xla_policy():
    strategy = tf.distribute.get_strategy()
    mlp, conv = VAE((28, 28, 1), latent_dim=4, architecture="mlp"), VAE((28, 28, 1), latent_dim=4, architecture="conv-small")
    assert not has_convolutions(mlp) and has_convolutions(conv)
    assert jit_setting("auto", mlp, strategy) is True  # this machine has no GPU
    assert jit_setting("auto", conv, strategy) == "auto"
    assert jit_setting("on", conv, strategy) is True and jit_setting("off", mlp, strategy) is False


def test_training_under_xla_still_stops_on_nan():
    from keras_vae.callbacks import StopOnNaN
    from keras_vae.errors import TrainingDiverged

    model = VAE((4, 4, 1), latent_dim=2, architecture="mlp")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    x = tf.fill([8, 4, 4, 1], float("nan"))
    with pytest.raises(TrainingDiverged, match="at epoch 1, step 1"):
        model.fit(x, batch_size=8, epochs=1, verbose=0, callbacks=[StopOnNaN()])


def test_cosine_schedule_decays_to_zero_over_the_run():
    schedule = learning_rate(FitConfig(learning_rate=2e-3, lr_schedule="cosine"), total_steps=100)
    assert float(schedule(0)) == pytest.approx(2e-3)
    assert float(schedule(50)) == pytest.approx(1e-3, rel=1e-3)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
    assert learning_rate(FitConfig(learning_rate=5e-4), 100) == 5e-4
    with pytest.raises(UserError, match="lr_schedule='step'"):
        FitConfig(lr_schedule="step")


def test_the_benchmark_scores_the_reference_with_the_same_evaluator():
    """The reference VAE goes through keras_vae's evaluator: its KL is the closed form of its own outputs."""
    import os
    import sys

    import numpy as np

    from conftest import REPO, tiny_images
    from keras_vae.data.splits import Split
    from keras_vae.evaluate import evaluate_model

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import benchmark

    encoder, decoder = benchmark.reference_networks("mlp", (28, 28, 1), 3)
    adapter = benchmark.reference_adapter(encoder, decoder, 3, (28, 28, 1))
    x = (tiny_images(20) > 127).astype(np.float32)
    mean, log_var, _ = encoder(x)
    closed_form = 0.5 * np.sum(mean**2 + np.exp(log_var) - 1 - log_var, axis=1)
    report = evaluate_model(adapter, Split("test", x), iw_samples=50, batch_size=10, progress=False)
    assert report["kl"] == pytest.approx(closed_form.mean(), rel=1e-4)
    assert report["nll_iw"] <= -report["elbo"] + 0.5


def test_time_to_quality_counts_the_run_but_not_the_scoring_that_draws_its_curve():
    import os
    import sys
    import time

    import numpy as np

    from conftest import REPO

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import benchmark

    curve = []
    slow_score = lambda model: (time.sleep(0.3), -100.0 + len(curve))[1]  # noqa: E731
    callback = benchmark.TestCurve.make(curve, time.time() - 5.0, slow_score)  # launched 5 s ago
    for epoch in range(3):
        callback.on_epoch_end(epoch)
    seconds = [t for t, _ in curve]
    assert 5.0 <= seconds[0] < 5.3 and np.all(np.diff(seconds) < 0.1)  # 0.9 s of scoring is not counted
    assert [elbo for _, elbo in curve] == [-100.0, -99.0, -98.0]
    assert benchmark.time_to_reach([(10.0, -250.0), (20.0, -240.0), (30.0, -235.0)], -240.0) == 20.0
    assert benchmark.time_to_reach([(10.0, -250.0)], -240.0) is None


def test_chunked_scoring_equals_one_pass_and_goes_on_from_its_cache(tmp_path):
    """The benchmarks' long scorings: chunks kept in a file add up to the one-pass evaluation (the same
    importance samples per image), a later call reuses the kept chunks rather than scoring them again, and a
    cache of another model is not reused."""
    import json
    import os
    import sys

    import keras
    import numpy as np

    from conftest import REPO, tiny_images
    from keras_vae.data.splits import Split
    from keras_vae.evaluate import evaluate_model
    from keras_vae.models.vae import VAE

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from benchmark_runs import chunked_evaluation

    keras.utils.set_random_seed(0)
    model = VAE((28, 28, 1), latent_dim=3)
    split = Split("test", (tiny_images(250) > 127).astype(np.float32))
    cache = str(tmp_path / "nll.json")
    score = (lambda count, **kw: chunked_evaluation(model, split, count, 20, cache, kw.pop("fingerprint", "a"),
                                                     chunk=100, **kw))
    with pytest.raises(SystemExit, match="within the budget"):
        score(250, budget_seconds=-1)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        chunked_evaluation(model, split, 250, 20, cache, "a", chunk=150)
    first = score(100)
    assert list(json.load(open(cache))["chunks"]) == ["0-100"] and first["num_examples"] == 100
    whole = evaluate_model(model, split, iw_samples=20, progress=False)
    chunked = score(250)
    assert chunked["num_examples"] == 250
    assert chunked["nll_iw"] == pytest.approx(whole["nll_iw"], rel=1e-6)
    assert chunked["nll_iw_stderr"] == pytest.approx(whole["nll_iw_stderr"], rel=1e-4)
    kept = json.load(open(cache))
    assert list(kept["chunks"]) == ["0-100", "100-200", "200-250"]
    kept["chunks"]["0-100"]["nll_iw"] += 100.0  # a kept chunk is read, not scored again
    json.dump(kept, open(cache, "w"))
    assert score(250)["nll_iw"] == pytest.approx(whole["nll_iw"] + 100.0 * 100 / 250, rel=1e-6)
    assert score(250, fingerprint="b")["nll_iw"] == pytest.approx(whole["nll_iw"], rel=1e-6)  # scored anew


def test_a_scoring_only_call_reports_the_training_calls_peak_memory():
    """A benchmark row measured again without training (its run complete) keeps the peak memory of the call
    that trained it, when that was larger than its own; without a recorded one it reports its own."""
    import os
    import resource
    import sys

    from conftest import REPO

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from benchmark_runs import peak_rss_gb

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert peak_rss_gb() == pytest.approx(own, rel=0.05)
    assert peak_rss_gb({"fit": 10.0}) == pytest.approx(own, rel=0.05)
    assert peak_rss_gb({"peak_rss_gb": own + 100.0}) == own + 100.0
    assert peak_rss_gb({"peak_rss_gb": own / 10}) == pytest.approx(own, rel=0.05)


def test_benchmark_machines_are_told_apart_by_their_vector_units():
    """Two VMs that both call themselves "AMD EPYC" ran the NVAE's train step 2.7x apart, one with AVX-512
    and one without: the machine string each benchmark stores names the widest vector units."""
    import os
    import sys

    from conftest import REPO

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from benchmark_runs import cpu_model, vector_units
    from keras_vae.train import cpu_flags

    assert vector_units("fpu sse4_2 avx avx2 fma".split()) == "AVX2, no AVX-512"
    assert vector_units("sse4_2 avx2 avx512f avx512bw".split()) == "AVX-512"
    assert vector_units("avx2 avx512f avx512_bf16 amx_tile amx_bf16".split()) == "AVX-512, BF16, AMX"
    assert vector_units("sse4_2 avx".split()) == "no AVX2"
    flags = cpu_flags()
    if flags is not None:  # this machine's string ends with its own units
        assert cpu_model().endswith(f" ({vector_units(flags)})")
