"""Audio as data: μ-law companding, log-mel spectrograms and Griffin-Lim against known signals, WAV files,
fixed-length clips with masks, and the recordings loaders on the real FSDD files."""

import os

import numpy as np
import pytest

from keras_vae import audio
from keras_vae.data import recordings
from keras_vae.errors import UserError

FSDD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "fsdd")
SETTINGS = audio.SpectrogramSettings()


def sine(hz, seconds=0.5, rate=8000, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def test_mu_law_classes_round_trip_exactly_and_waveforms_within_a_step():
    classes = np.arange(256)
    np.testing.assert_array_equal(audio.mu_law_encode(audio.mu_law_decode(classes)).numpy(), classes)
    x = np.linspace(-1, 1, 20001, dtype=np.float32)
    q = audio.mu_law_encode(x).numpy()
    assert q.min() == 0 and q.max() == 255 and np.all(np.diff(q) >= 0)  # monotone, full range
    # The companded value is within half a class of the class centre.
    error = np.abs(audio.mu_law_compress(x).numpy() - (2 * q / 255.0 - 1))
    assert error.max() <= 1 / 255 + 1e-6
    # Steps are finest near 0: a quiet sample comes back far closer than a loud one.
    back = audio.mu_law_decode(q).numpy()
    quiet, loud = np.abs(back - x)[np.abs(x) < 0.01].max(), np.abs(back - x)[np.abs(x) > 0.5].max()
    half_step_at_full_scale = np.log(256) * 256 / 255**2  # |dx/dq| / 2 at |x| = 1
    assert quiet < 5e-4 and loud <= half_step_at_full_scale + 1e-4 and loud > 20 * quiet


@pytest.mark.parametrize("hz", [300.0, 1000.0, 2500.0])
def test_log_mel_of_a_sine_peaks_in_the_band_of_its_frequency(hz):
    spectrogram = audio.log_mel_spectrogram(sine(hz)).numpy()  # [frames, mel]
    assert spectrogram.shape == (SETTINGS.num_frames(4000), SETTINGS.num_mel_bins)
    peak = np.argmax(spectrogram.mean(axis=0))
    centres = SETTINGS.mel_centres_hz()
    # The peak band's centre is the band centre nearest the sine (or a neighbour: bands overlap by half).
    assert abs(peak - np.argmin(np.abs(centres - hz))) <= 1


@pytest.mark.parametrize("hz", [440.0, 1200.0])
def test_griffin_lim_brings_a_sine_back_at_its_frequency(hz):
    signal = sine(hz)
    magnitude = np.abs(audio.stft(signal, SETTINGS).numpy())
    waveform = audio.griffin_lim(magnitude, SETTINGS, iterations=30).numpy()
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    assert abs(np.argmax(spectrum) * 8000 / len(waveform) - hz) < 8000 / len(waveform) * 2
    # Through the mel filter bank and back: still the same tone.
    waveform = audio.spectrogram_to_waveform(audio.log_mel_spectrogram(signal), SETTINGS, iterations=30).numpy()
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    assert abs(np.argmax(spectrum) * 8000 / len(waveform) - hz) < 60  # within a mel band here


def test_fit_length_pads_with_a_mask_and_cuts():
    padded, mask = audio.fit_length(np.arange(1, 6, dtype=np.float32), 8)
    np.testing.assert_array_equal(padded, [1, 2, 3, 4, 5, 0, 0, 0])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0, 0, 0])
    cut, mask = audio.fit_length(np.ones((10, 2)), 4)
    assert cut.shape == (4, 2) and mask.sum() == 4


def test_wav_files_round_trip_and_unreadable_ones_are_refused(tmp_path):
    signal = sine(500.0, seconds=0.1)
    audio.write_wav(str(tmp_path / "a.wav"), signal, 8000)
    back, rate = audio.read_wav(str(tmp_path / "a.wav"))
    assert rate == 8000 and back.shape == (800, 1)
    np.testing.assert_allclose(back[:, 0], signal, atol=1 / 32767)  # 16-bit quantization
    (tmp_path / "bad.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(UserError, match=r"Cannot read .*bad\.wav as a WAV file"):
        audio.read_wav(str(tmp_path / "bad.wav"))


def test_wav_folder_loader_labels_by_sub_folder_and_refuses_mixed_rates(tmp_path):
    for label, hz in (("low", 200.0), ("high", 2000.0)):
        os.makedirs(tmp_path / label)
        for i in range(5):
            audio.write_wav(str(tmp_path / label / f"{i}.wav"), sine(hz, seconds=0.05 * (i + 1)), 8000)
    loaded = recordings.load_wav_folder(str(tmp_path), test_fraction=0.2)
    assert len(loaded) == 10 and loaded.sample_rate == 8000 and loaded.test.sum() == 2
    assert loaded.label_names["label"] == ("high", "low")
    assert [len(w) for w in loaded.waveforms[:5]] == [400, 800, 1200, 1600, 2000]
    np.testing.assert_array_equal(loaded.labels["label"], [0] * 5 + [1] * 5)
    audio.write_wav(str(tmp_path / "low" / "odd.wav"), sine(200.0, rate=16000), 16000)
    with pytest.raises(UserError, match="sampled at 16000 Hz, the other recordings at 8000 Hz"):
        recordings.load_wav_folder(str(tmp_path))
    with pytest.raises(UserError, match="No .wav files"):
        recordings.load_wav_folder(str(tmp_path / "nothing-here"))


@pytest.mark.skipif(not os.path.isdir(FSDD), reason="the shared FSDD folder is not here")
def test_fsdd_loads_with_digit_speaker_and_its_own_test_split():
    data = recordings.load_fsdd(FSDD)
    assert len(data) == 3000 and data.sample_rate == 8000 and data.test.sum() == 300
    assert data.label_names["speaker"] == ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
    for name, classes in (("digit", 10), ("speaker", 6)):
        counts = np.bincount(data.labels[name][data.test], minlength=classes)
        assert np.all(counts == 300 // classes)  # indices 0-4 of every digit and speaker
    lengths = np.array([len(w) for w in data.waveforms])
    assert lengths.min() == 1148 and lengths.max() == 18262  # as the dataset's README says
    assert all(np.abs(w).max() <= 1.0 for w in data.waveforms)
    with pytest.raises(UserError, match="No FSDD recordings"):
        recordings.load_fsdd(os.path.dirname(FSDD))
