"""Audio as data: μ-law companding, log-mel spectrograms, Griffin-Lim, WAV files and fixed-length clips.

Small pure functions on tensors (TensorFlow's own `tf.signal` and `tf.audio`
ops, so they run inside an input pipeline or an exported graph):

- `mu_law_encode` / `mu_law_decode`: a waveform in [-1, 1] to 256 classes and
  back (ITU-T G.711; the 8-bit waveform of van den Oord et al. 2016/2017).
- `log_mel_spectrogram`, `mel_to_magnitude`, `griffin_lim`, `spectrogram_to_waveform`:
  the spectrogram representation and its way back to a waveform
  (Griffin & Lim 1984).
- `read_wav`, `write_wav`, `fit_length`: files, and clips cut or padded to a
  fixed length with a mask of the real samples.

References:
    ITU-T Recommendation G.711 (1988): μ-law companding.
    Griffin & Lim (1984). Signal estimation from modified short-time Fourier transform. IEEE TASSP.
    Lee & Seung (2001). Algorithms for non-negative matrix factorization. NeurIPS.
    van den Oord et al. (2017). Neural Discrete Representation Learning. NeurIPS, section 4.3.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_vae.config import REPRESENTATIONS
from keras_vae.errors import UserError

MU_LAW_CLASSES = 256


# ------------------------------------------------------------------ μ-law
def mu_law_compress(x, classes=MU_LAW_CLASSES):
    """F(x) = sign(x) · ln(1 + μ|x|) / ln(1 + μ), μ = classes − 1, for x in [-1, 1]."""
    mu = float(classes - 1)
    x = tf.clip_by_value(tf.convert_to_tensor(x, tf.float32), -1.0, 1.0)
    return tf.sign(x) * tf.math.log1p(mu * tf.abs(x)) / np.log1p(mu)


def mu_law_encode(x, classes=MU_LAW_CLASSES):
    """The class in [0, classes) of each sample of a waveform x in [-1, 1] (int32, same shape)."""
    mu = float(classes - 1)
    return tf.cast(tf.floor((mu_law_compress(x, classes) + 1.0) / 2.0 * mu + 0.5), tf.int32)


def mu_law_levels(x, classes=MU_LAW_CLASSES):
    """A waveform in [-1, 1] as its μ-law class's level in [-1, 1] (2q/(classes − 1) − 1): the values a
    categorical likelihood over `classes` evenly spaced levels scores."""
    return 2.0 * tf.cast(mu_law_encode(x, classes), tf.float32) / float(classes - 1) - 1.0


def mu_law_decode(q, classes=MU_LAW_CLASSES):
    """The waveform in [-1, 1] of classes q: the inverse of the companding at each class's centre."""
    mu = float(classes - 1)
    y = 2.0 * tf.cast(q, tf.float32) / mu - 1.0
    return tf.sign(y) * (tf.pow(1.0 + mu, tf.abs(y)) - 1.0) / mu


# ------------------------------------------------------------ spectrograms
@dataclasses.dataclass(frozen=True)
class SpectrogramSettings:
    """How a waveform becomes a log-mel spectrogram (defaults for 8 kHz speech: 32 ms frames, 8 ms hop)."""

    sample_rate: int = 8000
    frame_length: int = 256
    frame_step: int = 64
    fft_length: int = 256
    num_mel_bins: int = 64
    lower_hz: float = 60.0
    upper_hz: float = 3800.0
    floor: float = 1e-5  # added to the magnitude before the log

    @property
    def num_spectrogram_bins(self):
        return self.fft_length // 2 + 1

    def num_frames(self, num_samples):
        """Frames of a clip of `num_samples` samples (the STFT without padding)."""
        return 1 + (int(num_samples) - self.frame_length) // self.frame_step

    def mel_matrix(self):
        """[num_spectrogram_bins, num_mel_bins]: linear-frequency magnitudes to mel bands."""
        return tf.signal.linear_to_mel_weight_matrix(self.num_mel_bins, self.num_spectrogram_bins, self.sample_rate,
                                                     self.lower_hz, self.upper_hz)

    def mel_centres_hz(self):
        """The centre frequency of each mel band [num_mel_bins] (the bands' peaks, as tf.signal spaces them)."""
        mel = np.linspace(hz_to_mel(self.lower_hz), hz_to_mel(self.upper_hz), self.num_mel_bins + 2)[1:-1]
        return mel_to_hz(mel)


def hz_to_mel(hz):
    """The HTK mel scale that `tf.signal.linear_to_mel_weight_matrix` uses."""
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * np.expm1(np.asarray(mel, np.float64) / 1127.0)


def stft(waveform, settings):
    """Complex STFT [..., frames, num_spectrogram_bins] of waveforms [..., T] (Hann window)."""
    return tf.signal.stft(tf.convert_to_tensor(waveform, tf.float32), settings.frame_length, settings.frame_step,
                          settings.fft_length, window_fn=tf.signal.hann_window)


def log_mel_spectrogram(waveform, settings=SpectrogramSettings()):
    """log(mel magnitude + floor) [..., frames, num_mel_bins] of waveforms [..., T]."""
    magnitude = tf.abs(stft(waveform, settings))
    return tf.math.log(tf.tensordot(magnitude, settings.mel_matrix(), 1) + settings.floor)


def mel_to_magnitude(log_mel, settings=SpectrogramSettings(), iterations=100):
    """Linear-frequency magnitudes [..., frames, bins] from a log-mel spectrogram: the non-negative least-squares
    inverse of the mel filter bank, by multiplicative updates (Lee & Seung 2001) from its transpose.

    The pseudo-inverse is not used: where mel bands are narrower than an FFT bin (the low bands of a short FFT)
    it amplifies any inconsistency between neighbouring bands, e.g. in a decoder's smoothed spectrogram, into
    loud low-frequency hum."""
    mel = tf.nn.relu(tf.exp(tf.convert_to_tensor(log_mel, tf.float32)) - settings.floor)
    weights = settings.mel_matrix()  # [bins, mel]
    gram = tf.matmul(weights, weights, transpose_b=True)  # [bins, bins]
    target = tf.tensordot(mel, tf.transpose(weights), 1)  # mel W^T: [..., frames, bins]
    magnitude = target / (tf.reduce_sum(weights, axis=1) + 1e-8)
    for _ in range(iterations):
        magnitude = magnitude * target / (tf.tensordot(magnitude, gram, 1) + 1e-10)
    return magnitude


def griffin_lim(magnitude, settings=SpectrogramSettings(), iterations=60, seed=0):
    """A waveform [..., T] whose STFT magnitude approaches `magnitude` [..., frames, bins] (Griffin & Lim 1984):
    alternate between imposing the magnitude and projecting onto consistent STFTs, from random phases."""
    magnitude = tf.convert_to_tensor(magnitude, tf.float32)
    phase = tf.random.stateless_uniform(tf.shape(magnitude), seed=[seed, 0], minval=-np.pi, maxval=np.pi)
    window = tf.signal.inverse_stft_window_fn(settings.frame_step, forward_window_fn=tf.signal.hann_window)

    def to_waveform(phase):
        spectrum = tf.complex(magnitude * tf.cos(phase), magnitude * tf.sin(phase))
        return tf.signal.inverse_stft(spectrum, settings.frame_length, settings.frame_step, settings.fft_length,
                                      window_fn=window)

    for _ in range(iterations):
        phase = tf.math.angle(stft(to_waveform(phase), settings))
    return to_waveform(phase)


def spectrogram_to_waveform(log_mel, settings=SpectrogramSettings(), iterations=60, seed=0):
    """A waveform [..., T] for a log-mel spectrogram [..., frames, num_mel_bins] (mel inverse + Griffin-Lim)."""
    return griffin_lim(mel_to_magnitude(log_mel, settings), settings, iterations, seed)


# ------------------------------------------------------------------ files
def read_wav(path):
    """(waveform float32 [T, C] in [-1, 1], sample rate) of a PCM WAV file, read with `tf.audio.decode_wav`.

    Raises UserError naming the file when it is not a readable WAV.
    """
    try:
        audio, rate = tf.audio.decode_wav(tf.io.read_file(path))
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        raise UserError(f"Cannot read {path} as a WAV file: {error.message.splitlines()[0]} "
                        "(expected 16-bit PCM RIFF/WAVE).") from None
    return audio.numpy(), int(rate)


def write_wav(path, waveform, sample_rate):
    """Writes a waveform [T] or [T, C] in [-1, 1] as a 16-bit PCM WAV file."""
    waveform = np.asarray(waveform, np.float32)
    waveform = waveform[:, None] if waveform.ndim == 1 else waveform
    encoded = tf.audio.encode_wav(tf.clip_by_value(waveform, -1.0, 1.0), int(sample_rate))
    tf.io.write_file(path, encoded)


def fit_length(signal, length):
    """(signal cut or zero-padded to `length` along its first axis, mask [length] of the real samples: 1.0
    where the clip has data, 0.0 in the padding)."""
    signal = np.asarray(signal)
    kept = signal[:length]
    padding = [(0, length - len(kept))] + [(0, 0)] * (signal.ndim - 1)
    mask = np.zeros(length, np.float32)
    mask[: len(kept)] = 1.0
    return np.pad(kept, padding), mask


# ------------------------------------------------------------ representations
@dataclasses.dataclass(frozen=True)
class AudioFormat:
    """How recordings become fixed-length examples [T, C] with a padding mask [T], and back to waveforms.

    - "logmel": log-mel spectrograms [frames, num_mel_bins] (a Gaussian likelihood); back by Griffin-Lim.
    - "waveform": the μ-law levels of the samples [samples, 1] (the 256-way categorical likelihood).

    Clips are cut or zero-padded to `num_samples` samples; a spectrogram frame is padding when it starts
    after the clip's last sample.
    """

    representation: str = "logmel"
    sample_rate: int = 8000
    num_samples: int = 8384  # 1.05 s at 8 kHz: 128 frames of 64 samples (99.5% of FSDD's clips fit)

    @classmethod
    def at_rate(cls, representation, sample_rate):
        """The format for recordings at `sample_rate`: clips of the default duration (1.05 s)."""
        return cls(representation, sample_rate, int(round(cls.num_samples * sample_rate / cls.sample_rate)))

    def __post_init__(self):
        if self.representation not in REPRESENTATIONS:
            raise UserError(f"--representation must be one of {', '.join(REPRESENTATIONS)}. "
                            f"Received: {self.representation!r}.")

    @property
    def spectrogram(self):
        """The STFT and mel settings at this rate: 32 ms frames (a power of 2 samples), a quarter-frame hop,
        64 mel bands from 60 Hz to 95% of the Nyquist frequency."""
        frame = 2 ** int(round(np.log2(0.032 * self.sample_rate)))
        return SpectrogramSettings(self.sample_rate, frame, frame // 4, frame, upper_hz=0.475 * self.sample_rate)

    @property
    def length(self):
        """T, the steps of one example."""
        if self.representation == "waveform":
            return self.num_samples
        return self.spectrogram.num_frames(self.num_samples)

    def examples(self, waveforms):
        """(x float32 [N, T, C], mask float32 [N, T]) of waveforms (each [T_i], any length)."""
        clips, masks = zip(*(fit_length(w, self.num_samples) for w in waveforms))
        clips, masks = np.stack(clips).astype(np.float32), np.stack(masks)
        if self.representation == "waveform":
            return mu_law_levels(clips).numpy()[..., None], masks
        x = np.concatenate([log_mel_spectrogram(clips[i : i + 500], self.spectrogram).numpy()
                            for i in range(0, len(clips), 500)])
        lengths = masks.sum(axis=1)
        starts = np.arange(self.length) * self.spectrogram.frame_step
        return x, (starts[None, :] < lengths[:, None]).astype(np.float32)

    def to_waveforms(self, x, iterations=60):
        """Waveforms float32 [N, num_samples'] in [-1, 1] of examples x [N, T, C] (Griffin-Lim for spectrograms)."""
        x = tf.convert_to_tensor(x, tf.float32)
        if self.representation == "waveform":
            return mu_law_decode(tf.round((x[..., 0] + 1.0) / 2.0 * (MU_LAW_CLASSES - 1))).numpy()
        waveform = spectrogram_to_waveform(x, self.spectrogram, iterations)
        peak = tf.reduce_max(tf.abs(waveform), axis=-1, keepdims=True)
        return (waveform / tf.maximum(peak, 1.0)).numpy()  # louder than full scale: scaled down, not clipped

    def to_dict(self):
        return dataclasses.asdict(self)
