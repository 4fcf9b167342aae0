"""ShardDataset: a PyTorch-style iterable dataset over shards served by shardcache.

Works without torch installed (then it is a plain iterable). With torch it is an
``IterableDataset``: it splits the shards across ``torch.distributed`` ranks and DataLoader
workers with no overlap and no gap, reshuffles them every epoch from ``(seed, epoch)``
(``set_epoch``), and yields ``(path, bytes)``, or ``decode(path, data)``. Every item crosses
DataLoader's worker queue (fork, spawn or forkserver workers). Open file objects, for parsers
that stream (``stream=True``), are yielded only in the process that reads them.
"""

import os
import random
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

from ._client import Client

try:  # torch is optional
    import torch.utils.data as _tud

    _Base = _tud.IterableDataset
except ImportError:  # pragma: no cover - exercised where torch is absent
    _tud = None
    _Base = object


def _rank_world() -> Tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK/WORLD_SIZE."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _worker() -> Tuple[int, int]:
    """(worker id, workers) of the current DataLoader worker, (0, 1) outside one."""
    if _tud is not None:
        info = _tud.get_worker_info()
        if info is not None:
            return info.id, info.num_workers
    return 0, 1


def _in_worker() -> bool:
    """Whether this is a DataLoader worker process (its items cross a queue)."""
    return _tud is not None and _tud.get_worker_info() is not None


def split_shards(
    shards: Sequence[str], *, epoch: int, seed: int, shuffle: bool, rank: int, world: int, worker: int, workers: int
) -> List[str]:
    """This reader's shards for an epoch: the epoch's order (a permutation from (seed, epoch)
    when shuffling), then every ``world * workers``-th shard starting at this reader's slot.
    Over all ranks and workers the slices cover every shard exactly once."""
    if not (0 <= rank < world and 0 <= worker < workers):
        raise ValueError(f"rank {rank}/{world} or worker {worker}/{workers} out of range")
    order = list(shards)
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    slot = rank * workers + worker
    return order[slot :: world * workers]


class ShardDataset(_Base):  # type: ignore[misc, valid-type]
    """Iterate over shards read through shardcache.

    ``client`` is a Client or an endpoint string (each worker process connects on its own).
    By default each item is ``(path, data)`` with the shard's bytes. ``decode(path, data)``
    returns what to yield instead (it may yield many samples by returning an iterable and
    setting ``flatten=True``). ``stream=True`` yields ``(path, file object)`` pairs for
    streaming parsers (tarfile) without reading the shard into memory first; file objects
    cannot cross DataLoader's worker queue, so with ``num_workers > 0`` parse them in the
    worker (``decode``) instead. Every ``prefetch`` shards, the next ``prefetch`` shards of
    this reader's order are sent to the server as a prefetch hint (0 turns hints off).

    ``len()`` is the number of items this rank yields per epoch (its shards over all its
    workers): one per shard, so it raises TypeError with ``flatten=True``, where the number of
    samples is not known before the shards are read.
    """

    def __init__(
        self,
        client: Union[Client, str],
        shards: Sequence[str],
        *,
        shuffle: bool = False,
        seed: int = 0,
        decode: Optional[Callable[[str, bytes], Any]] = None,
        flatten: bool = False,
        stream: bool = False,
        prefetch: int = 8,
    ) -> None:
        super().__init__()
        if stream and decode is not None:
            raise ValueError("stream=True yields file objects; decode= is for bytes: choose one")
        if flatten and decode is None:
            raise ValueError("flatten=True needs decode= returning an iterable of samples")
        self._client: Client = client if isinstance(client, Client) else Client(client)
        self.shards = list(shards)
        self.shuffle = shuffle
        self.seed = seed
        self.decode = decode
        self.flatten = flatten
        self.stream = stream
        self.prefetch = prefetch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call before iterating, on every rank, like DistributedSampler)."""
        self.epoch = epoch

    def client(self) -> Client:
        """The Client of this process (pickled to workers as "connect again", kept across a
        fork and connected again there)."""
        return self._client

    def my_shards(self) -> List[str]:
        """The shards this rank and worker read this epoch."""
        rank, world = _rank_world()
        worker, workers = _worker()
        return split_shards(
            self.shards, epoch=self.epoch, seed=self.seed, shuffle=self.shuffle,
            rank=rank, world=world, worker=worker, workers=workers,
        )

    def __iter__(self) -> Iterator[Any]:
        if self.stream and _in_worker():
            raise TypeError(
                "ShardDataset(stream=True) yields open file objects, which cannot cross "
                "DataLoader's worker queue: parse them in the worker with decode=, or use "
                "num_workers=0"
            )
        client = self.client()
        mine = self.my_shards()
        for i, path in enumerate(mine):
            # Every `prefetch` shards, tell the server the next window of this reader's order.
            if self.prefetch > 0 and i % self.prefetch == 0:
                upcoming = mine[i + 1 : i + 1 + self.prefetch]
                if upcoming:
                    client.prefetch(upcoming)
            if self.stream:
                yield path, client.open(path)
                continue
            data = client.read(path)
            if self.decode is None:
                yield path, data
                continue
            out = self.decode(path, data)
            if self.flatten:
                yield from out
            else:
                yield out

    def __len__(self) -> int:
        if self.flatten:
            raise TypeError(
                "len() of a ShardDataset with flatten=True is not known: a shard's sample count "
                "is known only once it is read"
            )
        rank, world = _rank_world()
        return len(
            split_shards(
                self.shards, epoch=self.epoch, seed=self.seed, shuffle=self.shuffle,
                rank=rank, world=world, worker=0, workers=1,
            )
        )
