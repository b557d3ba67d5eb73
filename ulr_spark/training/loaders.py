"""Petastorm: from the examples Delta table to PyTorch batches on each training process.

The driver materialises the training columns once into Petastorm's Parquet cache; every
process of the distributed job then reads its own shard, chosen by the *global* rank
(``torch.distributed.get_rank()``), so shards stay disjoint across nodes. A process either
streams its shard through Petastorm (:func:`shard_batches`, memory: a shuffle buffer) or,
when the shard fits in memory (``train.input``, :func:`input_mode`), reads it once with pyarrow
into tensors on its device and draws shuffled batches from those (:func:`memory_batches`).
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ulr_spark import schema
from ulr_spark.io.sizing import PetastormLayout

# Below this many training rows the cache is written from one partition (make_converter).
SMALL_TABLE_ROWS = 100_000


def quiet_petastorm_warnings() -> None:
    """Petastorm 0.12.1 calls pyarrow APIs that warn on every read; they are known and harmless."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyarrow(\.|$)")


@dataclass
class SlateBatch:
    features: torch.Tensor  # [B, K, D] float32
    positions: torch.Tensor  # [B, K] int64, 0 = padding
    context_ids: torch.Tensor  # [B] int64
    clicks: torch.Tensor  # [B, K] float32 (fractional on the pieces of a split heavy row)
    impressions: torch.Tensor  # [B] float32

    @staticmethod
    def from_petastorm(batch: dict, max_slate_size: int, device: torch.device) -> SlateBatch:
        """Reassemble a batch of the columns :func:`petastorm_columns` wrote."""
        k = max_slate_size
        features = batch[schema.FEATURES]

        def stacked(prefix: str) -> torch.Tensor:
            return torch.stack([batch[f"{prefix}{i}"] for i in range(k)], dim=1)

        return SlateBatch(
            features=features.view(features.shape[0], k, -1).to(device, torch.float32),
            positions=stacked(schema.POSITION_OF_ENTRY_PREFIX).to(device, torch.int64),
            context_ids=batch[schema.CONTEXT_ID].to(device, torch.int64),
            clicks=stacked(schema.CLICKS_OF_ENTRY_PREFIX).to(device, torch.float32),
            impressions=batch[schema.IMPRESSIONS].to(device, torch.float32),
        )


def petastorm_columns(examples: DataFrame, max_slate_size: int, heavy_row_cap: int) -> DataFrame:
    """The training columns as Petastorm's cache holds them: ``features`` stays an array, and
    the short ``positions`` and ``clicks`` arrays are spread over scalar columns.

    A row of n impressions above ``heavy_row_cap`` is split into m = ceil(n / cap) equal pieces
    of n / m impressions and clicks / m clicks on each entry (fractional): every piece has the
    row's click rate, so the pieces' log-likelihood sums to the row's (ulr_spark.models.losses),
    and a hot slate is spread over several steps instead of dominating one.

    Petastorm 0.12 turns each array column into a matrix row by row in Python, a cost per row
    and column whatever the array's length, while scalar columns arrive as whole arrays; but
    every column adds work to each batch's shuffle. One array column is the measured optimum
    (docs/scaling.md).
    """
    k = max_slate_size
    pieces = F.greatest(F.lit(1), F.ceil(F.col(schema.IMPRESSIONS) / F.lit(heavy_row_cap))).cast("int")
    split = examples.select(
        F.col(schema.CONTEXT_ID),
        F.col(schema.IMPRESSIONS),
        F.col(schema.FEATURES),
        F.col(schema.POSITIONS),
        F.col(schema.CLICKS),
        pieces.alias("pieces"),
    ).withColumn("piece", F.explode(F.sequence(F.lit(1), F.col("pieces"))))
    return split.select(
        F.col(schema.CONTEXT_ID),
        (F.col(schema.IMPRESSIONS) / F.col("pieces")).alias(schema.IMPRESSIONS),
        F.col(schema.FEATURES),
        *[F.col(schema.POSITIONS)[i].alias(f"{schema.POSITION_OF_ENTRY_PREFIX}{i}") for i in range(k)],
        *[(F.col(schema.CLICKS)[i] / F.col("pieces")).alias(f"{schema.CLICKS_OF_ENTRY_PREFIX}{i}") for i in range(k)],
    )


def make_converter(
    spark: SparkSession, examples: DataFrame, cache_dir_url: str, layout: PetastormLayout, max_slate_size: int,
    heavy_row_cap: int,
):
    """Materialise the training columns into Petastorm's cache and return the converter.

    Petastorm shards by Parquet row group, so unequal files give unequal shards, and with
    endless epochs a rank on a small shard repeats it and overfits. A round-robin repartition
    into a multiple of the world size gives every rank the same number of rows, and the row
    group size gives every rank several row groups (see :mod:`ulr_spark.io.sizing`).
    """
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, cache_dir_url)
    columns = petastorm_columns(examples, max_slate_size, heavy_row_cap)
    if layout.rows is not None and layout.rows < SMALL_TABLE_ROWS:
        # Round-robin starts at a random partition for each input partition, so a few rows in
        # several inputs may leave a file empty; from one input partition the files differ by at
        # most one row, and none is empty when the rows are at least the files.
        columns = columns.coalesce(1)
    return make_spark_converter(columns.repartition(layout.files), parquet_row_group_size_bytes=layout.row_group_bytes)


class Prefetcher:
    """Runs an iterator in a background thread, ``depth`` items ahead of the consumer.

    Petastorm 0.12 assembles array columns row by row in the consuming thread; torch releases
    the GIL while it computes, so producing the next batch here overlaps with the training
    step instead of adding to it.
    """

    _END = object()

    def __init__(self, source: Iterator, depth: int = 4):
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as error:  # handed to the consumer, which re-raises it
            self._put(error)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@contextlib.contextmanager
def shard_batches(
    converter, batch_size: int, rank: int, world_size: int, max_slate_size: int, device: torch.device, seed: int
) -> Iterator[Iterator[SlateBatch]]:
    """An endless, shuffled stream of this rank's batches (epochs are counted in steps).

    ``seed`` must be the same on every rank: Petastorm also uses it to assign row groups to
    shards, and different seeds would give overlapping shards.
    """
    from petastorm.pytorch import BatchedDataLoader

    # The batched loader shuffles and slices whole column tensors; the default one collates
    # row by row in Python and ran at a twentieth of the model's speed (docs/scaling.md).
    with converter.make_torch_dataloader(
        data_loader_fn=BatchedDataLoader,
        seed=seed,
        batch_size=batch_size,
        num_epochs=None,
        cur_shard=rank,
        shard_count=world_size,
        shuffling_queue_capacity=batch_size * 8,
        workers_count=1,
    ) as loader:
        batches = Prefetcher(SlateBatch.from_petastorm(b, max_slate_size, device) for b in loader)
        try:
            yield batches
        finally:
            batches.close()


def shard_tensor_bytes(rows: int, max_slate_size: int, num_features: int) -> int:
    """Bytes one process's shard of ``rows`` training rows takes as the tensors
    :func:`memory_batches` holds: float32 features [rows, K, D], int64 positions and float32
    clicks [rows, K], an int64 context id and a float32 impression count per row."""
    k = max_slate_size
    return rows * (4 * k * num_features + 8 * k + 4 * k + 8 + 4)


def shard_files(file_urls: list[str], rank: int, world_size: int) -> list[str]:
    """This rank's files of Petastorm's cache: every ``world_size``-th file from ``rank``.
    make_converter writes a multiple of the world size of files holding (nearly) equal
    numbers of rows, so every rank gets the same share, disjoint from the others'."""
    return list(file_urls)[rank::world_size]


def read_shard(file_urls: list[str], max_slate_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The training columns of ``file_urls`` (Petastorm's cache files, any fsspec URL) read
    with pyarrow into tensors on ``device``: the :class:`SlateBatch` fields of every row."""
    import fsspec
    import numpy as np
    import pyarrow.parquet as pq

    k = max_slate_size
    positions = [f"{schema.POSITION_OF_ENTRY_PREFIX}{i}" for i in range(k)]
    clicks = [f"{schema.CLICKS_OF_ENTRY_PREFIX}{i}" for i in range(k)]
    # One file at a time into preallocated arrays: the peak is the result plus one file.
    sizes = []
    for url in file_urls:
        with fsspec.open(url, "rb") as handle:
            sizes.append(pq.ParquetFile(handle).metadata.num_rows)
    rows = sum(sizes)
    if not rows:
        raise ValueError("train: this process's shard of the examples is empty")
    out: dict[str, np.ndarray] = {}
    start = 0
    for url, n in zip(file_urls, sizes):
        if not n:
            continue
        with fsspec.open(url, "rb") as handle:
            table = pq.read_table(handle)
        if not out:
            d = len(table.column(schema.FEATURES)[0]) // k
            out = {
                "features": np.empty((rows, k, d), np.float32), "positions": np.empty((rows, k), np.int64),
                "context_ids": np.empty(rows, np.int64), "clicks": np.empty((rows, k), np.float32),
                "impressions": np.empty(rows, np.float32),
            }
        part = slice(start, start + n)
        for chunk_start, chunk in _chunks(table.column(schema.FEATURES)):
            values = chunk.flatten().to_numpy(zero_copy_only=False)
            out["features"][start + chunk_start : start + chunk_start + len(chunk)] = values.reshape(len(chunk), k, -1)
        for i in range(k):
            out["positions"][part, i] = table.column(positions[i]).to_numpy()
            out["clicks"][part, i] = table.column(clicks[i]).to_numpy()
        out["context_ids"][part] = table.column(schema.CONTEXT_ID).to_numpy()
        out["impressions"][part] = table.column(schema.IMPRESSIONS).to_numpy()
        start += n
        del table
    return {name: torch.from_numpy(array).to(device) for name, array in out.items()}


def _chunks(column) -> Iterator[tuple[int, Any]]:
    """(offset, chunk) of each chunk of a chunked Arrow column."""
    offset = 0
    for chunk in column.chunks:
        yield offset, chunk
        offset += len(chunk)


def shuffled_batches(tensors: dict[str, torch.Tensor], batch_size: int, seed: int) -> Iterator[SlateBatch]:
    """An endless stream of batches of ``batch_size`` rows drawn without replacement: the rows
    in a new random order each pass, a batch that crosses the end of a pass taking the rest
    from the next one, so every batch is full and every row is seen once per pass."""
    rows = tensors["positions"].shape[0]
    device = tensors["positions"].device
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(rows, generator=generator)
    start = 0
    while True:
        parts, wanted = [], batch_size
        while wanted:
            if start == rows:
                order, start = torch.randperm(rows, generator=generator), 0
            take = min(wanted, rows - start)
            parts.append(order[start:start + take])
            start, wanted = start + take, wanted - take
        index = (parts[0] if len(parts) == 1 else torch.cat(parts)).to(device)
        yield SlateBatch(**{name: tensor.index_select(0, index) for name, tensor in tensors.items()})


@contextlib.contextmanager
def memory_batches(
    converter, batch_size: int, rank: int, world_size: int, max_slate_size: int, device: torch.device, seed: int
) -> Iterator[Iterator[SlateBatch]]:
    """Like :func:`shard_batches`, but the rank's shard is read once into tensors on ``device``
    and shuffled there: no per-row decoding while training (train.input, docs/scaling.md)."""
    started = time.perf_counter()
    tensors = read_shard(shard_files(converter.file_urls, rank, world_size), max_slate_size, device)
    if rank == 0:
        megabytes = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
        print(
            f"train: rank 0 read its shard into memory: {tensors['positions'].shape[0]} rows, {megabytes:,.1f} MiB on "
            f"{device}, in {time.perf_counter() - started:.1f}s", flush=True,
        )
    yield shuffled_batches(tensors, batch_size, seed + 7919 * rank)


def input_mode(setting: str, rows: int, world_size: int, max_slate_size: int, num_features: int, limit_mb: int) -> tuple[bool, str]:
    """(read into memory?, the reason, for the log): ``train.input`` "memory" or "stream" as
    set; "auto" reads into memory when a process's shard (``rows`` / ``world_size`` rows, the
    largest) fits in ``limit_mb`` as tensors."""
    shard = shard_tensor_bytes(math.ceil(rows / world_size), max_slate_size, num_features)
    size = f"a process's shard is {shard / 2**20:,.1f} MiB as tensors"
    if setting != "auto":
        return setting == "memory", f"train.input={setting} ({size})"
    if shard <= limit_mb * 2**20:
        return True, f"{size}, within train.memory_limit_mb={limit_mb}: each process reads it once into memory"
    return False, f"{size}, over train.memory_limit_mb={limit_mb}: each process streams it through Petastorm"
