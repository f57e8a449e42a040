"""Weights I/O, below everything that loads or saves a model (`pretrained`, `convert`, `export`, the
pretraining heads): `files` reads and writes safetensors and torch files, `state` maps a torch state dict
onto a model and back. Neither imports a model class."""
