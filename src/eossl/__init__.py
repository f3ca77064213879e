"""eossl: self-supervised pretraining and evaluation for Earth-observation imagery."""

__version__ = "0.1.0"
