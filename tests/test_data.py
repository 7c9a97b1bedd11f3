"""Data sets, the infinite sampler and the LightningDataModule (exact resume included)."""
import itertools
import json
import pickle
import struct
import tarfile
import zipfile
import zlib
from functools import partial
from types import SimpleNamespace

import lightning as L
import numpy as np
import PIL.Image
import pytest
import torch

from edmlab.data import (CIFAR10Dataset, DigitsDataset, ImageFolderDataset, InfiniteSampler, PointsDataset,
                         digits_arrays)
from edmlab.data.points import ring
from edmlab.training.datamodule import EDMDataModule


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


# ---------------------------------------------------------------- InfiniteSampler

def test_sampler_epochs_are_seeded_permutations():
    a = take(InfiniteSampler(10, seed=3), 30)
    assert a == take(InfiniteSampler(10, seed=3), 30)
    assert a != take(InfiniteSampler(10, seed=4), 30)
    epochs = [a[i:i + 10] for i in (0, 10, 20)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    assert take(InfiniteSampler(4, shuffle=False), 9) == [0, 1, 2, 3, 0, 1, 2, 3, 0]


@pytest.mark.parametrize("world_size", [2, 3])
def test_sampler_ranks_interleave_into_the_single_process_stream(world_size):
    size, steps = 10, 20  # 10 is not a multiple of 3: rank streams cross epoch boundaries
    single = take(InfiniteSampler(size, seed=1), steps * world_size)
    per_rank = [take(InfiniteSampler(size, seed=1, rank=r, world_size=world_size), steps) for r in range(world_size)]
    interleaved = [per_rank[r][i] for i in range(steps) for r in range(world_size)]
    assert interleaved == single
    first_epoch = [single[i] for i in range(size)]
    owners = [i % world_size for i in range(size)]
    for r in range(world_size):  # disjoint within an epoch, together covering it
        assert {x for x, o in zip(first_epoch, owners) if o == r} == set(per_rank[r][: owners.count(r)])


def test_sampler_start_drops_exactly_that_many_items():
    full = take(InfiniteSampler(7, seed=5, rank=1, world_size=2), 40)
    assert take(InfiniteSampler(7, seed=5, rank=1, world_size=2, start=13), 27) == full[13:]


def test_sampler_is_endless_and_validates():
    with pytest.raises(TypeError):
        len(InfiniteSampler(5))
    for kwargs, name in [(dict(size=0), "size"), (dict(size=5, rank=2, world_size=2), "rank"),
                         (dict(size=5, start=-1), "start"), (dict(size=5, world_size=0), "world_size")]:
        with pytest.raises(ValueError, match=name):
            InfiniteSampler(**kwargs)


# ---------------------------------------------------------------- digits and points

def test_digits_dataset_wraps_the_arrays_and_holds_out_297():
    ds = DigitsDataset()
    images, labels = digits_arrays("train")
    assert len(ds) == 1500 and ds.shape == (1, 8, 8) and ds.num_classes == 10
    x, y = ds[17]
    assert torch.equal(x, images[17]) and y == labels[17] and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    assert len(ds.held_out()) == 297


def test_points_labels_are_the_mixture_components():
    ds = PointsDataset(n=8000, seed=0)
    assert ds.shape == (2,) and ds.num_classes == 8 and ds.points.dtype == torch.float32
    nearest = torch.cdist(ds.points.double(), ring(8)).argmin(1)
    assert (nearest == ds.labels).float().mean() > 0.995  # modes 0.765 apart, std 0.1
    counts = torch.bincount(ds.labels, minlength=8) / len(ds)
    torch.testing.assert_close(counts, torch.full((8,), 1 / 8), atol=0.015, rtol=0)
    torch.testing.assert_close(ds.points.std(0), torch.full((2,), (0.5 + 0.1**2) ** 0.5), atol=0.015, rtol=0)
    assert torch.equal(PointsDataset(n=8000, seed=0).points, ds.points)
    held_out = ds.held_out()
    assert len(held_out) == 8000 and not torch.equal(held_out.points, ds.points)


def test_points_custom_mixture_and_errors():
    ds = PointsDataset(n=500, means=[[0.0, 0, 0], [3, 3, 3]], stds=[0.1, 0.2], weights=[1, 3])
    assert ds.shape == (3,) and ds.num_classes == 2
    assert (ds.labels == 1).float().mean() == pytest.approx(0.75, abs=0.06)
    with pytest.raises(ValueError, match="preset"):
        PointsDataset(n=10, preset="spiral")
    with pytest.raises(ValueError, match="stds"):
        PointsDataset(n=10, means=[[0.0, 1.0]])


# ---------------------------------------------------------------- image folders

def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(array).save(path)


def make_folder(root, n=5, size=4, channels=3, labels=True):
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(n):
        shape = (size, size, channels) if channels == 3 else (size, size)
        name = f"{i // 3:05d}/img{i:08d}.png"
        arrays[name] = rng.integers(0, 256, shape, dtype=np.uint8)
        write_png(root / name, arrays[name])
    if labels:
        (root / "dataset.json").write_text(json.dumps({"labels": [[name, i % 3] for i, name in enumerate(arrays)]}))
    return arrays


def test_image_folder_reads_pixels_and_labels(tmp_path):
    arrays = make_folder(tmp_path / "set")
    ds = ImageFolderDataset(tmp_path / "set", resolution=4)
    assert len(ds) == 5 and ds.shape == (3, 4, 4) and ds.num_classes == 3
    for i, name in enumerate(sorted(arrays)):
        x, y = ds[i]
        expected = torch.from_numpy(arrays[name].transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1
        assert torch.equal(x, expected) and x.dtype == torch.float32 and int(y) == i % 3
    unlabelled = ImageFolderDataset(tmp_path / "set", use_labels=False)
    assert unlabelled.num_classes == 0 and int(unlabelled[0][1]) == -1
    subset = ImageFolderDataset(tmp_path / "set", max_size=3)
    assert len(subset) == 3 and {int(subset[i][1]) for i in range(3)} <= {0, 1, 2}
    assert set(subset.files) <= set(ds.files)


def test_image_folder_zip_equals_folder_and_greyscale(tmp_path):
    make_folder(tmp_path / "set", channels=1)
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as archive:
        for path in sorted((tmp_path / "set").rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(tmp_path / "set").as_posix())
    folder, zipped = ImageFolderDataset(tmp_path / "set"), ImageFolderDataset(tmp_path / "set.zip")
    assert zipped.shape == (1, 4, 4) and len(zipped) == len(folder)
    for i in range(len(folder)):
        assert torch.equal(folder[i][0], zipped[i][0]) and folder[i][1] == zipped[i][1]
    clone = pickle.loads(pickle.dumps(zipped))  # what a DataLoader worker gets
    assert torch.equal(clone[2][0], zipped[2][0])


def test_image_folder_missing_or_empty_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No image files found"):
        ImageFolderDataset(tmp_path / "empty")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_image_folder_names_the_corrupt_file(tmp_path, damage):
    make_folder(tmp_path, labels=False)
    target = tmp_path / "00001" / "img00000004.png"
    data = target.read_bytes()
    target.write_bytes(b"not a png at all" if damage == "garbage" else data[: len(data) - 20])
    with pytest.raises(ValueError, match="Corrupt.*img00000004.png"):
        ImageFolderDataset(tmp_path)


def damage_pixel_data(path, how):
    """Rewrite the PNG at ``path`` with its IDAT chunk's zlib stream cut in half ("truncate") or its bytes after the
    2-byte zlib header inverted ("flip"), each chunk's CRC recomputed: the header reads and ``verify()`` (which checks
    the CRCs) passes, but the pixels do not decode."""
    data, pos, chunks = path.read_bytes(), 8, []
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IDAT":
            body = body[:len(body) // 2] if how == "truncate" else body[:2] + bytes(b ^ 0xFF for b in body[2:])
        chunks.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
        pos += 12 + length
    path.write_bytes(data[:8] + b"".join(chunks))
    with PIL.Image.open(path) as image:
        image.verify()


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_image_folder_decodes_small_sets_at_start(tmp_path, how):
    """A PNG whose pixel data is broken under a valid header and CRCs is refused by the constructor, the file (and
    the ZIP member) named in one line; decode_at_start below the set's size leaves it to the first use, which names
    it the same way."""
    make_folder(tmp_path / "set", labels=False)
    target = tmp_path / "set" / "00001" / "img00000004.png"
    damage_pixel_data(target, how)
    with pytest.raises(ValueError, match=r"Corrupt image .*set/00001/img00000004.png: its pixel data does not "
                                         r"decode") as error:
        ImageFolderDataset(tmp_path / "set")
    assert "\n" not in str(error.value)
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as archive:
        for path in sorted((tmp_path / "set").rglob("*.png")):
            archive.write(path, path.relative_to(tmp_path / "set").as_posix())
    with pytest.raises(ValueError, match=r"Corrupt image 00001/img00000004.png in .*set.zip: its pixel data"):
        ImageFolderDataset(tmp_path / "set.zip")
    for source in (tmp_path / "set", tmp_path / "set.zip"):
        lazy = ImageFolderDataset(source, decode_at_start=4)  # 5 images: a "large" set
        assert lazy[3][0].shape == (3, 4, 4)
        with pytest.raises(ValueError, match=r"Corrupt image .*00001/img00000004.png"):
            lazy[4]
    subset = ImageFolderDataset(tmp_path / "set", max_size=3, seed=1)  # only the kept images are decoded
    assert "00001/img00000004.png" not in subset.files and len(subset) == 3


def test_image_folder_decode_at_start_must_be_a_count(tmp_path):
    make_folder(tmp_path, labels=False)
    assert len(ImageFolderDataset(tmp_path, decode_at_start=0)) == 5
    with pytest.raises(ValueError, match=r"decode_at_start must be an integer >= 0 .*decode_at_start=-1"):
        ImageFolderDataset(tmp_path, decode_at_start=-1)


@pytest.mark.parametrize("odd, message", [(np.zeros((5, 5, 3), np.uint8), r"\(3, 5, 5\) but"),
                                          (np.zeros((4, 4), np.uint8), r"\(1, 4, 4\) but"),
                                          (np.zeros((4, 4, 4), np.uint8), "mode 'RGBA'")])
def test_image_folder_names_the_odd_image(tmp_path, odd, message):
    make_folder(tmp_path, labels=False)
    write_png(tmp_path / "00001" / "zz_odd.png", odd)
    with pytest.raises(ValueError, match=f"zz_odd.png.*{message}"):
        ImageFolderDataset(tmp_path)


def test_image_folder_rejects_non_square_and_wrong_resolution(tmp_path):
    write_png(tmp_path / "a" / "x.png", np.zeros((4, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="6x4.*square"):
        ImageFolderDataset(tmp_path / "a")
    make_folder(tmp_path / "b", labels=False)
    with pytest.raises(ValueError, match="resolution=8"):
        ImageFolderDataset(tmp_path / "b", resolution=8)


@pytest.mark.parametrize("edit, message", [("drop", "1 image\\(s\\) without a label"),
                                           ("add", "1 label\\(s\\) without an image"),
                                           ("negative", "non-negative")])
def test_image_folder_labels_must_match_the_files(tmp_path, edit, message):
    make_folder(tmp_path)
    entries = json.loads((tmp_path / "dataset.json").read_text())["labels"]
    if edit == "drop":
        entries = entries[1:]
    elif edit == "add":
        entries.append(["00009/ghost.png", 1])
    else:
        entries[0][1] = -2
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": entries}))
    with pytest.raises(ValueError, match=message):
        ImageFolderDataset(tmp_path)
    assert len(ImageFolderDataset(tmp_path, use_labels=False)) == 5


# ---------------------------------------------------------------- CIFAR-10

def test_cifar10_offline_error_says_where_to_put_the_files(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        CIFAR10Dataset(root=tmp_path)
    text = str(error.value)
    for needle in ("cifar-10-python.tar.gz", "cifar-10-batches-py", str(tmp_path), "data.dataset.root",
                   "download=true", "network"):
        assert needle in text


def fake_cifar(root, per_batch=3):
    """CIFAR-10's python format (pickled dicts of uint8 [n, 3072] R,G,B planes) with random pixels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = dict(data=rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                             labels=rng.integers(0, 10, per_batch).tolist())
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    (folder / "batches.meta").write_bytes(pickle.dumps(dict(label_names=[f"c{i}" for i in range(10)])))
    return batches


@pytest.fixture
def skip_md5(monkeypatch):
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


def test_cifar10_loads_the_python_batches(tmp_path, skip_md5):
    batches = fake_cifar(tmp_path)
    ds = CIFAR10Dataset(root=tmp_path, train=True)
    assert len(ds) == 15 and ds.shape == (3, 32, 32)
    x, y = ds[4]  # second item of data_batch_2
    flat = batches["data_batch_2"]["data"][1].astype(np.float32)
    assert torch.equal(x, torch.from_numpy(flat.reshape(3, 32, 32)) / 127.5 - 1)
    assert int(y) == batches["data_batch_2"]["labels"][1] and y.dtype == torch.int64
    assert len(ds.held_out()) == 3


def test_cifar10_extracts_the_archive(tmp_path, skip_md5):
    fake_cifar(tmp_path / "src")
    (tmp_path / "root").mkdir()
    with tarfile.open(tmp_path / "root" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert len(CIFAR10Dataset(root=tmp_path / "root", train=False)) == 3


# ---------------------------------------------------------------- EDMDataModule

def test_datamodule_batches_and_properties():
    dm = EDMDataModule(DigitsDataset(), batch_size=16, cond=True, seed=2)
    x, c = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32
    assert c.shape == (16, 10) and c.dtype == torch.float32 and torch.equal(c.sum(1), torch.ones(16))
    order = take(InfiniteSampler(1500, seed=2), 16)
    images, labels = digits_arrays("train")
    assert torch.equal(x, images[order]) and torch.equal(c.argmax(1), labels[order])
    assert dm.shape == (1, 8, 8) and dm.label_dim == 10
    assert dm.network_kwargs == dict(img_resolution=8, in_channels=1, out_channels=1)
    uncond = EDMDataModule(partial(DigitsDataset, "train"), batch_size=4)
    assert uncond.label_dim == 0 and next(iter(uncond.train_dataloader()))[1].shape == (4, 0)
    points = EDMDataModule(partial(PointsDataset, n=64), batch_size=8, cond=True)
    x, c = next(iter(points.train_dataloader()))
    assert x.shape == (8, 2) and c.shape == (8, 8) and points.network_kwargs == dict(dim=2)
    assert torch.equal(dm.val_images(5), digits_arrays("test")[0][:5])


def test_datamodule_xflip_doubles_with_mirrors():
    dm = EDMDataModule(DigitsDataset(), batch_size=4, xflip=True)
    assert len(dm.train_set) == 3000
    assert torch.equal(dm.train_set[1500 + 7][0], dm.dataset[7][0].flip(-1))
    assert torch.equal(dm.train_set[7][0], dm.dataset[7][0])
    with pytest.raises(ValueError, match="xflip"):
        EDMDataModule(PointsDataset(n=8), batch_size=4, xflip=True).train_set


def test_datamodule_validates(tmp_path):
    for kwargs, needle in [(dict(batch_size=0), "batch_size"), (dict(batch_size=2.5), "batch_size"),
                           (dict(batch_size=4, num_workers=-1), "num_workers")]:
        with pytest.raises(ValueError, match=needle):
            EDMDataModule(DigitsDataset(), **kwargs)
    make_folder(tmp_path, labels=False)
    with pytest.raises(ValueError, match="cond"):
        EDMDataModule(ImageFolderDataset(tmp_path), batch_size=2, cond=True).label_dim


def test_datamodule_reads_rank_and_resume_position_from_the_trainer():
    dm = EDMDataModule(DigitsDataset(), batch_size=8, seed=1)
    dm.trainer = SimpleNamespace(global_step=5, accumulate_grad_batches=3, global_rank=1, world_size=2)
    sampler = dm.train_dataloader().sampler
    assert (sampler.rank, sampler.world_size, sampler.start) == (1, 2, 5 * 3 * 8)


class Recorder(L.LightningModule):
    """Records every training batch; one parameter so the optimizer has something to step."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[0].clone())
        return (self.weight * batch[0].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(steps, ckpt_path=None, save_to=None):
    model = Recorder()
    trainer = L.Trainer(max_steps=steps, accumulate_grad_batches=2, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(model, EDMDataModule(DigitsDataset(), batch_size=4, seed=3), ckpt_path=ckpt_path)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return model.seen


@pytest.mark.filterwarnings("ignore")
def test_resumed_training_continues_the_exact_data_order(tmp_path):
    uninterrupted = fit(6)
    first = fit(3, save_to=tmp_path / "step3.ckpt")
    resumed = fit(6, ckpt_path=tmp_path / "step3.ckpt")
    assert len(uninterrupted) == 12 and len(first) == 6 and len(resumed) == 6  # 2 batches per optimizer step
    assert all(torch.equal(a, b) for a, b in zip(first, uninterrupted[:6]))
    assert all(torch.equal(a, b) for a, b in zip(resumed, uninterrupted[6:]))
