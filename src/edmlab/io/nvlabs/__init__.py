"""NVIDIA's published networks (NVlabs/edm, NVlabs/edm2 pickles) in edmlab, read without running their code.

``edmlab.load("edm-cifar10-32x32-uncond-vp.pkl")`` goes through :func:`read_network_pickle`;
``python -m edmlab.cli.convert <pkl> <network.pt>`` writes edmlab's own format.
"""
from edmlab.io.nvlabs.networks import read_network_pickle
from edmlab.io.nvlabs.unpickler import Persistent, UnsafePickleError, read_pickle

__all__ = ["read_network_pickle", "read_pickle", "Persistent", "UnsafePickleError"]
