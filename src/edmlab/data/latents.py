"""Latent data sets in NVlabs/edm2's layout (what its ``dataset_tool.py encode`` and ``python -m edmlab.cli.encode``
write): a folder or ZIP of ``.npy`` arrays, usually ``00000/img-mean-std-00000000.npy``, each the float32 posterior
moments ``[2L, H, W]`` of one image (L channels of means, then L of stds; 8×64×64 for a 512² image under
stabilityai/sd-vae-ft-mse), with an optional ``dataset.json`` ``{"labels": [[fname, int], ...]}`` or ``null``.

Items are ``(moments float32 [2L, H, W], int label)`` (−1 unlabelled): the moments, not a latent sample, since
EDM2 draws a fresh latent from them for every minibatch (``codec.sample``). ``shape`` is the item shape,
``latent_shape`` the network's ``[L, H, W]``. Arrays are read with ``np.load(allow_pickle=False)``: nothing in a
file is run. Every header is checked at start-up (dtype, shape), without reading the data.
"""
import os
import zipfile

import numpy as np
import PIL.Image
import torch

from edmlab.data.image_folder import ImageFolderDataset

ENCODE_HINT = "python -m edmlab.cli.encode <images folder|zip> <dest> --vae-path DIR"


def npy_header(f) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of an ``.npy`` stream from its header alone."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return tuple(shape), dtype


class LatentDataset(torch.utils.data.Dataset):
    """NVlabs/edm2-format latents from a folder or ZIP at ``path``; see the module docstring.

    ``channels``: the expected channel count of the moments (2L; None = whatever the files have).
    ``resolution``: the expected latent side length (None = any). ``use_labels``, ``max_size``, ``seed``: as
    :class:`edmlab.data.ImageFolderDataset`.
    """

    _archive, _open, _where, _read_labels = (ImageFolderDataset._archive, ImageFolderDataset._open,
                                             ImageFolderDataset._where, ImageFolderDataset._read_labels)
    __getstate__ = ImageFolderDataset.__getstate__
    _list_files, _keep_subset = ImageFolderDataset._list_files, ImageFolderDataset._keep_subset

    def __init__(self, path: str, channels: int | None = None, resolution: int | None = None,
                 use_labels: bool = True, max_size: int | None = None, seed: int = 0):
        names = self._list_files(path, "Latent", f"to the folder or ZIP that {ENCODE_HINT} wrote")
        self.files = sorted(n for n in names if n.lower().endswith(".npy"))
        if not self.files:
            PIL.Image.init()
            images = [n for n in names if os.path.splitext(n)[1].lower() in PIL.Image.EXTENSION]
            found = f"{len(images)} images but no" if images else "no"
            raise ValueError(f"{self.path} holds {found} .npy latents; encode it first: {ENCODE_HINT}, then "
                             f"data.dataset.path=<dest>")
        self.shape = self._check_arrays(channels, resolution)
        self.latent_shape = (self.shape[0] // 2, *self.shape[1:])
        self.labels, self.num_classes = self._read_labels(names) if use_labels else (None, 0)
        self._keep_subset(max_size, seed)

    def _check_arrays(self, channels, resolution) -> tuple[int, int, int]:
        """Header-check every file; return the common item shape ``(2L, H, W)``."""
        expected = None
        for name in self.files:
            try:
                with self._open(name) as f:
                    shape, dtype = npy_header(f)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
                raise ValueError(f"Corrupt or unreadable array {self._where(name)}: {error}; expected an .npy of "
                                 f"float32 moments [2L, H, W] ({ENCODE_HINT})") from None
            if dtype.kind != "f" or len(shape) < 3 or int(np.prod(shape[:-2])) % 2:
                raise ValueError(f"{self._where(name)} is a {dtype} array of shape {shape}; expected float32 "
                                 f"moments [2L, H, W] (mean and std of L latent channels)")
            item = (int(np.prod(shape[:-2])), int(shape[-2]), int(shape[-1]))
            if expected is None:
                if channels is not None and item[0] != int(channels):
                    raise ValueError(f"{self._where(name)} has {item[0]} channels (mean and std of {item[0] // 2} "
                                     f"latent channels); expected {channels} ({int(channels) // 2} latent channels "
                                     f"of the codec and network)")
                if resolution is not None and item[1:] != (int(resolution),) * 2:
                    raise ValueError(f"{self._where(name)} is {item[1]}x{item[2]} but resolution={resolution} was "
                                     f"asked for; set data.dataset.resolution={item[1]} (or null)")
                expected = item
            elif item != expected:
                raise ValueError(f"{self._where(name)} has shape (C, H, W)={item} but {self._where(self.files[0])} "
                                 f"has {expected}; all latents must share one shape")
        return expected

    def moments(self, index: int) -> np.ndarray:
        """The float32 moments ``[2L, H, W]`` of item ``index``."""
        name = self.files[index]
        try:
            with self._open(name) as f:
                array = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ValueError(f"Corrupt array {self._where(name)}: {error}") from None
        return array.reshape(self.shape).astype(np.float32, copy=False)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = -1 if self.labels is None else int(self.labels[index])
        return torch.from_numpy(self.moments(index).copy()), torch.tensor(label, dtype=torch.int64)
