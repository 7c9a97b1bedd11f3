"""Work split over processes started by torchrun (one per GPU, or several CPU processes): the ranks from the
environment, a process group for them, each rank's share of a sequence (the seeds), and the collectives that put
the results back together on rank 0. With one process (no WORLD_SIZE, or WORLD_SIZE=1) every collective is the
identity and torch.distributed is never touched."""
import atexit
import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


class PeerRankError(RuntimeError):
    """Another rank failed: this one stops too, at the same point, instead of waiting in a collective forever."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` processes (``local_rank``: its index on its node, i.e. its GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence) -> Sequence:
        """Rank r's contiguous block ``items[⌊r·n/W⌋ : ⌊(r+1)·n/W⌋]``: the blocks differ in size by at most one and
        their concatenation in rank order is ``items``."""
        n = len(items)
        return items[self.rank * n // self.world : (self.rank + 1) * n // self.world]

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        """On rank 0 the rows of every rank's CPU tensor ``x`` concatenated in rank order, None on the others (the
        inverse of :meth:`share`). Blocks of unequal length are padded for the transfer."""
        if self.world == 1:
            return x
        counts = [int(c) for c in self._all_gather(torch.tensor([len(x)], dtype=torch.int64))]
        padded = torch.zeros((max(counts), *x.shape[1:]), dtype=x.dtype)
        padded[: len(x)] = x
        blocks = [torch.empty_like(padded) for _ in range(self.world)] if self.is_zero else None
        dist.gather(padded, blocks, dst=0)
        return torch.cat([b[:c] for b, c in zip(blocks, counts)]) if self.is_zero else None

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Σ over ranks of ``x`` (a copy; every rank gets the sum)."""
        x = x.clone()
        if self.world > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def max(self, value: float) -> float:
        if self.world == 1:
            return value
        x = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
        return float(x)

    def all(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank: lets all ranks raise the same error together instead of one rank
        raising while the others wait in the next collective."""
        if self.world == 1:
            return flag
        x = torch.tensor([int(flag)], dtype=torch.int64)
        dist.all_reduce(x, op=dist.ReduceOp.MIN)
        return bool(x)

    def agree(self, fn: Callable, *args, zero_only: bool = False, **kwargs):
        """``fn(*args, **kwargs)`` on every rank (on rank 0 alone when ``zero_only``; None elsewhere), then one
        collective where the ranks tell each other whether it raised: if it raised anywhere, it raises everywhere,
        its own error on a failing rank and :class:`PeerRankError` naming the first failed rank and its error on
        the others. Call it around local work that precedes a collective (``fn`` itself holds none), so that no
        rank is left waiting for one that has failed."""
        error, result = None, None
        if self.is_zero or not zero_only:
            try:
                result = fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
                error = e
        if self.world > 1:
            messages = self.all_values(None if error is None else f"{type(error).__name__}: {error}")
            failed = next(((r, m) for r, m in enumerate(messages) if m is not None), None)
            if error is None and failed is not None:
                raise PeerRankError(f"rank {failed[0]} of {self.world} failed ({failed[1]}); rank {self.rank} stops")
        if error is not None:
            raise error
        return result

    def all_values(self, value):
        """``value`` of every rank, in rank order."""
        if self.world == 1:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def _all_gather(self, x: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(out, x)
        return torch.cat(out)


def env_ranks() -> Ranks:
    """The ranks of an initialised process group, else RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them
    (rank 0 of 1 when they are absent)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = os.environ.get(name, str(default))
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not an integer; start the processes with "
                             f"torchrun, which sets it") from None
    ranks = Ranks(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if not (ranks.world >= 1 and 0 <= ranks.rank < ranks.world):
        raise ValueError(f"RANK={ranks.rank} is not a rank of WORLD_SIZE={ranks.world} processes")
    return ranks


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:<LOCAL_RANK>`` when there are several processes."""
    if device.type != "cuda" or ranks.world == 1:
        return device
    if device.index is not None:
        raise ValueError(f"device={device} pins every one of the {ranks.world} processes to one GPU; use device=cuda "
                         f"(or auto): rank r then takes cuda:<its LOCAL_RANK>")
    if ranks.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={ranks.local_rank} but only {torch.cuda.device_count()} GPUs are visible: start "
                         f"at most that many processes per node (torchrun --nproc-per-node)")
    torch.cuda.set_device(ranks.local_rank)
    return torch.device("cuda", ranks.local_rank)


def init_process_group(ranks: Ranks, device: torch.device) -> None:
    """The default process group of torchrun's processes (``env://``: MASTER_ADDR, MASTER_PORT), gloo for CPU
    tensors and NCCL for CUDA tensors, kept until the process exits: the jobs of a multirun share it (a second
    ``init_process_group`` on torchrun's store would find the first one's keys and hang). Nothing happens for one
    process or when a group exists already."""
    if ranks.world == 1 or dist.is_initialized():
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={ranks.world} but {', '.join(missing)} is not set: start the processes with "
                         f"torchrun (docs/scaling.md), or unset WORLD_SIZE for one process")
    dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo", rank=ranks.rank,
                            world_size=ranks.world)
    atexit.register(destroy_process_group)


def destroy_process_group() -> None:
    """Leave the process group together: a gloo group first waits (at most 60 s) until every rank is here, so that
    no rank tears down its connections while a peer still has traffic on them. Without it a torchrun rank was seen,
    once in about ten runs, to abort after its work at interpreter exit ("terminate called without an active
    exception", SIGABRT) while the other rank was still finishing."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo" and dist.get_world_size() > 1:
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        except RuntimeError:  # a peer is gone already: leave anyway
            pass
    dist.destroy_process_group()


def mean_covariance(x: torch.Tensor, ranks: Ranks) -> tuple[np.ndarray, np.ndarray]:
    """μ = Σᵢ xᵢ / N and the unbiased covariance Σ = Σᵢ (xᵢ − μ)(xᵢ − μ)ᵀ / (N − 1), float64, of the rows xᵢ that
    all ranks hold together (``edmlab.evaluation.metrics.feature_statistics`` of the concatenated rows). Only sums cross
    between ranks: first N and Σᵢ xᵢ, then the centred outer products, which avoids the cancellation of
    E[xxᵀ] − μμᵀ."""
    x = x.detach().cpu().to(torch.float64)
    n = int(ranks.sum(torch.tensor([len(x)], dtype=torch.float64)))
    if n < 2:
        raise ValueError(f"the covariance needs at least 2 feature vectors, got N={n}")
    mu = ranks.sum(x.sum(0)) / n
    centred = x - mu
    sigma = ranks.sum(centred.T @ centred) / (n - 1)
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise ValueError("features contain NaN or inf; check the images or the feature network")
    return mu.numpy(), sigma.numpy()
