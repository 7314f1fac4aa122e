"""Collections of recordings: the Free Spoken Digit Dataset, and any folder of WAV files.

Both give `Recordings`: the waveforms at their own lengths (a clip's length is
a property of the data; cutting and padding to a fixed length, with a mask,
is `keras_vae.audio.fit_length`), the sample rate, and labels.

FSDD (Jakobovski et al.): 3,000 recordings `{digit}_{speaker}_{index}.wav` of
the digits 0–9 by 6 speakers at 8 kHz; its convention holds out indices 0–4
of every digit and speaker (300 recordings) as the test split.
"""

import dataclasses
import os
import re
from typing import Dict, List, Tuple

import numpy as np

from keras_vae.audio import read_wav
from keras_vae.errors import UserError

FSDD_NAME = re.compile(r"(\d)_([A-Za-z]+)_(\d+)\.wav")
FSDD_TEST_INDICES = range(5)


@dataclasses.dataclass
class Recordings:
    """Waveforms (float32 [T_i] each, mono, in [-1, 1]) with integer labels per recording.

    `labels` maps a label's name (e.g. "digit", "speaker") to an int array [N];
    `label_names` maps it to the names of its values, where they have names.
    `test` is a boolean [N]: the recordings of the held-out split.
    """

    waveforms: List[np.ndarray]
    sample_rate: int
    labels: Dict[str, np.ndarray]
    label_names: Dict[str, Tuple[str, ...]]
    test: np.ndarray

    def __len__(self):
        return len(self.waveforms)


def read_mono(path, sample_rate=None):
    """A file's waveform [T] (channels averaged) and its rate; refuses a rate other than `sample_rate`."""
    audio, rate = read_wav(path)
    if sample_rate is not None and rate != sample_rate:
        raise UserError(f"{path} is sampled at {rate} Hz, the other recordings at {sample_rate} Hz: "
                        "resample the folder to one rate first.")
    return audio.mean(axis=1).astype(np.float32), rate


def read_all(paths):
    """(waveforms, the common sample rate) of WAV files."""
    waveforms, rate = [], None
    for path in paths:
        waveform, rate = read_mono(path, rate)
        waveforms.append(waveform)
    return waveforms, rate


def load_fsdd(folder):
    """The Free Spoken Digit Dataset from its folder (the one holding `recordings/`, or `recordings/` itself),
    with labels `digit` and `speaker` and the dataset's own test split."""
    recordings = os.path.join(folder, "recordings")
    recordings = recordings if os.path.isdir(recordings) else folder
    names = sorted(n for n in os.listdir(recordings) if FSDD_NAME.fullmatch(n)) if os.path.isdir(recordings) else []
    if not names:
        raise UserError(f"No FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) in {folder}. Point --data-dir at "
                        "the dataset's folder, e.g. ../shared/data/fsdd.")
    parts = [FSDD_NAME.fullmatch(n).groups() for n in names]
    speakers = tuple(sorted({speaker for _, speaker, _ in parts}))
    waveforms, rate = read_all(os.path.join(recordings, n) for n in names)
    return Recordings(
        waveforms=waveforms, sample_rate=rate,
        labels={"digit": np.array([int(d) for d, _, _ in parts]),
                "speaker": np.array([speakers.index(s) for _, s, _ in parts])},
        label_names={"digit": tuple(str(d) for d in range(10)), "speaker": speakers},
        test=np.array([int(i) in FSDD_TEST_INDICES for _, _, i in parts]))


def load_wav_folder(folder, test_fraction=0.1, seed=0):
    """Every `.wav` under `folder`; the sub-folder a file sits in is its `label` (none when all sit at the top).
    A seeded `test_fraction` of the recordings is held out."""
    paths = sorted(os.path.join(root, n) for root, _, files in os.walk(folder) for n in files
                   if n.lower().endswith(".wav"))
    if not paths:
        raise UserError(f"No .wav files under {folder}.")
    waveforms, rate = read_all(paths)
    classes = [os.path.relpath(os.path.dirname(p), folder) for p in paths]
    names = tuple(sorted(set(classes)))
    labels, label_names = {}, {}
    if names != (".",):
        labels["label"] = np.array([names.index(c) for c in classes])
        label_names["label"] = names
    test = np.zeros(len(paths), bool)
    test[np.random.default_rng(seed).permutation(len(paths))[: int(round(test_fraction * len(paths)))]] = True
    return Recordings(waveforms=waveforms, sample_rate=rate, labels=labels, label_names=label_names, test=test)
