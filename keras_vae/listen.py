"""Listening to a model of recordings: its examples as WAV files and spectrogram pictures, and voice conversion.

A run trained on recordings (`--dataset fsdd`, a WAV folder) models fixed-length
examples in its `--representation`; `keras_vae.audio.AudioFormat` turns them
back into waveforms (Griffin-Lim for log-mel spectrograms). Clips keep their
real length: the steps a padding mask marks as padding are silenced and cut.

- `write_clips`: examples to WAV files;
- `spectrogram_picture`: examples as one grey picture of their spectrograms;
- `sample_audio`, `reconstruct_audio`: what `keras-vae sample` and `reconstruct` write for such a run;
- `convert`: `keras-vae convert RUN --input a.wav --speaker NAME --out b.wav`: a conditional code model's
  codes of a recording, decoded with another speaker's label (van den Oord et al. 2017, section 4.3).
"""

import os

import numpy as np
import tensorflow as tf

from keras_vae.audio import log_mel_spectrogram, write_wav
from keras_vae.data.datasets import dataset_of
from keras_vae.errors import UserError
from keras_vae.images import make_grid, save_png

GRIFFIN_LIM_ITERATIONS = 60


def audio_of(config, data=None):
    """(the run's `AudioFormat`, its dataset, or `data` when given: a dataset or a split); a UserError for a run
    that was not trained on recordings."""
    data = data or dataset_of(config)
    if data.audio is None:
        raise UserError(f"The run's dataset {config.dataset!r} is not recordings (fsdd or a WAV folder): there is "
                        "nothing to listen to. Pictures are for images (sample, reconstruct write PNG grids).")
    return data.audio, data


def silence_padding(x, mask, audio):
    """Examples x [N, T, C] with the padded steps (mask 0) set to silence in `audio`'s representation."""
    if mask is None:
        return np.asarray(x, np.float32)
    silence = np.log(audio.spectrogram.floor) if audio.representation == "logmel" else 0.0
    return np.where(np.asarray(mask)[..., None] > 0.5, x, silence).astype(np.float32)


def real_samples(mask, audio):
    """The length [N] of each example's clip, from its mask: exact for waveforms; for spectrograms, whose
    real frames are those that start inside the clip, within one hop above it."""
    steps = np.asarray(mask).sum(axis=1)
    if audio.representation == "waveform":
        return steps.astype(int)
    return np.minimum(audio.num_samples, steps * audio.spectrogram.frame_step).astype(int)


def write_clips(folder, names, x, audio, mask=None, lengths=None):
    """Writes examples x [N, T, C] as `folder/<name>.wav`, cut to `lengths` samples (default: as their masks
    say, else whole); returns the paths."""
    if not os.path.isdir(folder):
        raise UserError(f"Cannot write WAV files to {folder}: the folder does not exist.")
    waveforms = audio.to_waveforms(silence_padding(x, mask, audio), GRIFFIN_LIM_ITERATIONS)
    if lengths is None:
        lengths = real_samples(mask, audio) if mask is not None else [waveforms.shape[1]] * len(waveforms)
    paths = []
    for name, waveform, length in zip(names, waveforms, lengths):
        paths.append(os.path.join(folder, f"{name}.wav"))
        write_wav(paths[-1], waveform[:length], audio.sample_rate)
    return paths


def spectrogram_picture(x, audio, columns=4):
    """Spectrograms x [N, frames, bins] as one grey grid (time across, low frequencies at the bottom, the
    floor black); waveforms are drawn through their log-mel spectrograms."""
    x = np.asarray(x, np.float32)
    if audio.representation == "waveform":
        x = log_mel_spectrogram(audio.to_waveforms(x), audio.spectrogram).numpy()
    floor = np.log(audio.spectrogram.floor)
    top = max(float(x.max()), floor + 1.0)
    images = np.clip((x - floor) / (top - floor), 0.0, 1.0).transpose(0, 2, 1)[:, ::-1, :, None]
    return make_grid(images, min(columns, len(images)))


def sample_audio(model, config, folder, num=8, temperature=1.0, seed=0, label=None):
    """Writes `num` draws from the model as `sample_<i>.wav` and `samples.png` in `folder`; returns the paths."""
    audio, _ = audio_of(config)
    y = None if label is None else tf.fill([num], label)
    x = np.asarray(model.sample(num, seed=seed, temperature=temperature, y=y)[0])
    paths = write_clips(folder, [f"sample_{i}" for i in range(num)], x, audio)
    save_png(os.path.join(folder, "samples.png"), spectrogram_picture(x, audio))
    return paths + [os.path.join(folder, "samples.png")]


def reconstruct_audio(model, config, data, folder, num=8):
    """Writes the split's first `num` clips as `original_<i>.wav`, their reconstructions as
    `reconstruction_<i>.wav`, and `reconstructions.png` (originals above reconstructions)."""
    from keras_vae.codes import model_labels

    audio, _ = audio_of(config, data)  # the split knows its format: no second load of the dataset
    data = data.head(num)
    labels = model_labels(model, data)
    rebuilt = np.asarray(model.reconstruct(tf.constant(data.x), None if labels is None else tf.constant(labels)))
    paths = write_clips(folder, [f"original_{i}" for i in range(len(data.x))], data.x, audio, data.mask)
    paths += write_clips(folder, [f"reconstruction_{i}" for i in range(len(data.x))], rebuilt, audio, data.mask)
    columns = len(data.x)
    picture = spectrogram_picture(np.concatenate([silence_padding(data.x, data.mask, audio),
                                                  silence_padding(rebuilt, data.mask, audio)]), audio, columns)
    save_png(os.path.join(folder, "reconstructions.png"), picture)
    return paths + [os.path.join(folder, "reconstructions.png")]


def label_value(dataset, name, value):
    """The index of label `value` (a name such as "theo", or an index) among the dataset's `name` labels."""
    names = dataset.factor_values.get(name, ())
    if value in names:
        return names.index(value)
    count = len(names) if names else int(dataset.factors_train[:, list(dataset.factor_names).index(name)].max()) + 1
    if str(value).isdigit() and int(value) < count:
        return int(value)
    raise UserError(f"Unknown {name} {value!r}. Valid: {', '.join(names) if names else f'0..{count - 1}'}.")


def convert_examples(model, x, y_target):
    """Examples x [N, T, C] encoded to codes and decoded with labels y_target [N]: [N, T, C]."""
    codes = model.encode_indices(tf.constant(x, tf.float32))
    return np.asarray(model.decode_indices(codes, tf.constant(y_target, tf.int32)))


def check_converter(model):
    if not (model.uses_labels and hasattr(model, "encode_indices")):
        raise UserError("`convert` decodes a recording's codes in another voice: it needs a discrete-code model "
                        "conditioned on the speaker (keras-vae fit --dataset fsdd --model vq_vae --condition "
                        f"speaker). This run's model is {type(model).__name__}"
                        + (" without a condition." if not model.uses_labels else "."))


def convert(run_dir, input_path, target, out_path):
    """Writes `out_path`: the recording `input_path` (a WAV file at the run's sample rate) spoken with the
    label `target` of the model's condition (a speaker's name or index). Returns the target's index."""
    from keras_vae.data.recordings import read_mono
    from keras_vae.runs import load_run

    config, model = load_run(run_dir)
    check_converter(model)
    audio, dataset = audio_of(config)
    directory = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(directory):
        raise UserError(f"Cannot write {out_path}: the folder {directory} does not exist.")
    target = label_value(dataset, model.label_name, target)
    waveform, _ = read_mono(input_path, audio.sample_rate)
    x, mask = audio.examples([waveform])
    converted = convert_examples(model, x, [target])
    written = write_clips(directory, ["converted"], converted, audio, mask, [min(len(waveform), audio.num_samples)])[0]
    os.replace(written, out_path)
    return target
