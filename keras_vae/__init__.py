"""keras_vae: variational autoencoders in Keras 3 on TensorFlow Probability.

Importing the package does no work: TensorFlow is imported by the modules
that need it (`keras_vae.models`, `keras_vae.train`, ...).
"""

__version__ = "0.1.0"
