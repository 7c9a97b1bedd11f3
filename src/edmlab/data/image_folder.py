"""Image data sets in NVlabs/edm's format (what its ``dataset_tool.py`` writes).

A folder, or a ZIP archive, of images (any sub-folders; usually ``00000/img00000000.png``) with
an optional ``dataset.json`` at the top: ``{"labels": [["00000/img00000000.png", 6], ...]}``
(``"labels": null`` means unlabelled). Every image must have the same square size and the same
number of channels (1 = greyscale, 3 = RGB). Items are ``(x, label)`` with x = uint8/127.5 − 1,
float32 ``[C, R, R]`` in [−1, 1], and the integer class label (−1 when the set is unlabelled).

The constructor checks every file cheaply (PIL reads the header and ``verify()`` checks the
chunks' CRCs without decoding pixels) and the labels against the file list. A file can pass that and
still fail to decode (a PNG whose IDAT holds a broken zlib stream under a valid CRC), so a set of at
most ``decode_at_start`` images (100k by default) is also decoded in full at start-up, with a progress
bar, exactly as ``__getitem__`` decodes it. A broken data set then fails before training with the
offending file (and ZIP member) named rather than hours into training; a larger set is decoded on
first use, and a failure there names the file the same way.
"""
import json
import os
import zipfile

import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

_CHANNELS = {"L": 1, "RGB": 3}
_FIX = "re-create the data set with NVlabs/edm's dataset_tool.py (or convert the file with PIL)"


class ImageFolderDataset(torch.utils.data.Dataset):
    """NVlabs/edm-format images from a folder or ZIP at ``path``; see the module docstring.

    ``resolution``: the expected side length (None = whatever the files have).
    ``use_labels``: read ``dataset.json``; False treats the set as unlabelled.
    ``max_size``: keep a random subset of this many images (drawn with ``seed``, kept in file order).
    ``decode_at_start``: decode every kept image in the constructor when there are at most this many
    (0: never; each image is then decoded on first use only).
    """

    def __init__(self, path: str, resolution: int | None = None, use_labels: bool = True,
                 max_size: int | None = None, seed: int = 0, decode_at_start: int = 100_000):
        if isinstance(decode_at_start, bool) or not isinstance(decode_at_start, int) or decode_at_start < 0:
            raise ValueError(f"decode_at_start must be an integer >= 0 (0: decode on first use only), got "
                             f"decode_at_start={decode_at_start!r}")
        names = self._list_files(path, "Image", "to a folder or ZIP of PNGs (NVlabs/edm dataset_tool.py output)")

        PIL.Image.init()
        extensions = set(PIL.Image.EXTENSION)
        self.files = sorted(n for n in names if os.path.splitext(n)[1].lower() in extensions)
        if not self.files:
            raise ValueError(f"No image files found in {self.path}; expected PNGs such as 00000/img00000000.png")
        self.shape = self._check_images(resolution)
        self.labels, self.num_classes = self._read_labels(names) if use_labels else (None, 0)

        self._keep_subset(max_size, seed)
        if len(self.files) <= decode_at_start:
            self._decode_all()

    def _keep_subset(self, max_size: int | None, seed: int) -> None:
        """Keep ``max_size`` files (and their labels) drawn without replacement by ``seed``, in their order."""
        if max_size is None:
            return
        if int(max_size) < 1:
            raise ValueError(f"max_size must be >= 1 or None, got max_size={max_size}")
        if max_size < len(self.files):
            keep = np.sort(np.random.default_rng(seed).choice(len(self.files), int(max_size), replace=False))
            self.files = [self.files[i] for i in keep]
            if self.labels is not None:
                self.labels = self.labels[keep]

    def _list_files(self, path, what: str, expected: str) -> set[str]:
        """Every file name (relative, '/'-separated) of the folder or ZIP at ``path``; ``what`` and ``expected`` name
        the data set in the one-line errors."""
        self.path = os.fspath(path)
        self._zip = None
        if os.path.isdir(self.path):
            self._kind = "dir"
            return {os.path.relpath(os.path.join(root, f), self.path).replace(os.sep, "/")
                    for root, _, files in os.walk(self.path) for f in files}
        if os.path.isfile(self.path) and self.path.lower().endswith(".zip"):
            self._kind = "zip"
            try:
                return {n for n in self._archive().namelist() if not n.endswith("/")}
            except zipfile.BadZipFile as error:
                raise ValueError(f"{self.path} is not a readable ZIP archive ({error})") from None
        if os.path.exists(self.path):
            raise ValueError(f"{what} data set path {self.path} must be a folder or a .zip archive "
                             f"(set data.dataset.path to one)")
        raise FileNotFoundError(f"{what} data set path {self.path} does not exist; set data.dataset.path {expected}")

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip

    def _open(self, name: str):
        if self._kind == "dir":
            return open(os.path.join(self.path, name), "rb")
        return self._archive().open(name, "r")

    def _where(self, name: str) -> str:
        return f"{self.path}/{name}" if self._kind == "dir" else f"{name} in {self.path}"

    def _check_images(self, resolution: int | None) -> tuple[int, int, int]:
        """Header-check every file; return the common shape ``(C, R, R)``."""
        expected = None
        for name in self.files:
            try:
                with self._open(name) as f, PIL.Image.open(f) as image:
                    size, mode = image.size, image.mode
                    image.verify()
            except Exception as error:
                raise ValueError(f"Corrupt or unreadable image {self._where(name)}: {error}; "
                                 f"remove it or {_FIX}") from None
            if mode not in _CHANNELS:
                raise ValueError(f"Image {self._where(name)} has PIL mode {mode!r}; only greyscale 'L' (1 channel) "
                                 f"and 'RGB' (3 channels) are supported: {_FIX}")
            width, height = size
            shape = (_CHANNELS[mode], height, width)
            if expected is None:
                if width != height:
                    raise ValueError(f"Image {self._where(name)} is {width}x{height}; the data set must be square: "
                                     f"{_FIX} --transform=center-crop --resolution=RxR")
                if resolution is not None and width != int(resolution):
                    raise ValueError(f"Image {self._where(name)} is {width}x{height} but resolution={resolution} "
                                     f"was asked for; set data.dataset.resolution={width} (or null) or resize the set")
                expected = shape
            elif shape != expected:
                raise ValueError(f"Image {self._where(name)} has shape (C, H, W)={shape} but "
                                 f"{self._where(self.files[0])} "
                                 f"has {expected}; all images must share one size and channel count: {_FIX}")
        return expected

    def _decode_all(self) -> None:
        """Decode every image once (``_pixels``), so that pixel data which the header check cannot see fails now."""
        quiet = None if int(os.environ.get("RANK", 0) or 0) == 0 else True  # None: a bar on a terminal only
        for name in tqdm(self.files, desc=f"Decoding {len(self.files)} images of {self.path}", unit="img",
                         disable=quiet, leave=False):
            self._pixels(name)

    def _pixels(self, name: str) -> np.ndarray:
        """The uint8 pixels ``[C, R, R]`` of ``name``; a file that does not decode to them is a ValueError naming it."""
        try:
            with self._open(name) as f, PIL.Image.open(f) as image:
                pixels = np.array(image)
        except Exception as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(f"Corrupt image {self._where(name)}: its pixel data does not decode ({reason}); "
                             f"remove it or {_FIX}") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        pixels = pixels.transpose(2, 0, 1)
        if pixels.shape != self.shape or pixels.dtype != np.uint8:
            raise ValueError(f"Image {self._where(name)} decoded to {pixels.dtype} (C, H, W)={pixels.shape}, "
                             f"expected uint8 {self.shape}; {_FIX}")
        return pixels

    def _read_labels(self, names: set[str]) -> tuple[np.ndarray | None, int]:
        if "dataset.json" not in names:
            return None, 0
        where = self._where("dataset.json")
        try:
            with self._open("dataset.json") as f:
                entries = json.load(f)["labels"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{where} must be JSON of the form {{\"labels\": [[fname, int], ...]}} "
                             f"({error!r})") from None
        if entries is None:
            return None, 0
        try:
            table = {str(fname).replace("\\", "/"): label for fname, label in entries}
        except (TypeError, ValueError):
            raise ValueError(f"{where}: 'labels' must be a list of [fname, int] pairs") from None
        missing = [f for f in self.files if f not in table]
        extra = sorted(set(table) - set(self.files))
        if missing or extra:
            raise ValueError(f"{where} does not match the image files: {len(missing)} image(s) without a label "
                             f"{missing[:3]}, {len(extra)} label(s) without an image {extra[:3]}; fix dataset.json "
                             f"or pass data.dataset.use_labels=false")
        bad = [(f, table[f]) for f in self.files
               if isinstance(table[f], bool) or not isinstance(table[f], int) or table[f] < 0]
        if bad:
            raise ValueError(f"{where}: labels must be non-negative class integers, got e.g. {bad[:3]}")
        labels = np.array([table[f] for f in self.files], dtype=np.int64)
        return labels, int(labels.max()) + 1

    def __getstate__(self):
        return dict(self.__dict__, _zip=None)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self._pixels(self.files[index])
        image = torch.from_numpy(pixels.copy()).to(torch.float32) / 127.5 - 1
        label = -1 if self.labels is None else int(self.labels[index])
        return image, torch.tensor(label, dtype=torch.int64)
