from setuptools import find_packages, setup

setup(
    name="keras-vae",
    version="0.1.0",
    description="Variational autoencoders in Keras 3 on TensorFlow Probability, "
    "trained with tf.distribute and exported for TF Serving.",
    packages=find_packages(include=["keras_vae", "keras_vae.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.*",
        "keras==3.15.*",
        "tensorflow-probability==0.25.0",
        "tf-keras==2.21.*",  # tensorflow_probability's import needs it
        "tensorboard==2.21.*",
        "click>=8.1",
        "numpy>=1.26",
        "pillow>=10",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "tensorflow-serving-api==2.21.*"],
        "grpc": ["tensorflow-serving-api==2.21.*"],
    },
    entry_points={"console_scripts": ["keras-vae=keras_vae.cli:main"]},
)
