"""Denoiser networks F(x; c_noise, class_labels, augment_labels): EDM's U-Nets and a small MLP for point data."""
from edmlab.nets.dhariwal import DhariwalUNet
from edmlab.nets.edm2 import EDM2UNet
from edmlab.nets.mlp import MLP
from edmlab.nets.songunet import SongUNet

__all__ = ["SongUNet", "DhariwalUNet", "MLP", "EDM2UNet"]
