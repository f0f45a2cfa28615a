"""kd-edge: distill a Hugging Face teacher into a small student, export it, prove it on the device."""

__version__ = "0.1.0"
