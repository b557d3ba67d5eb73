"""Petastorm: from the examples Delta table to PyTorch batches on each training process.

The driver materialises the training columns once into Petastorm's Parquet cache; every
process of the distributed job then reads its own shard, chosen by the *global* rank
(``torch.distributed.get_rank()``), so shards stay disjoint across nodes.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
from pyspark.sql import DataFrame, SparkSession

from ulr_spark import schema as S
from ulr_spark.sizing import PetastormLayout


def quiet_petastorm_warnings() -> None:
    """Petastorm 0.12.1 calls pyarrow APIs that warn on every read; they are known and harmless."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyarrow(\.|$)")


@dataclass
class SlateBatch:
    features: torch.Tensor  # [B, K, D] float32
    positions: torch.Tensor  # [B, K] int64, 0 = padding
    context_ids: torch.Tensor  # [B] int64
    clicks: torch.Tensor  # [B, K] float32
    impressions: torch.Tensor  # [B] float32

    @staticmethod
    def from_petastorm(batch: dict, max_slate_size: int, device: torch.device) -> "SlateBatch":
        features = batch[S.FEATURES]
        return SlateBatch(
            features=features.view(features.shape[0], max_slate_size, -1).to(device, torch.float32),
            positions=batch[S.POSITIONS].to(device, torch.int64),
            context_ids=batch[S.CONTEXT_ID].to(device, torch.int64),
            clicks=batch[S.CLICKS].to(device, torch.float32),
            impressions=batch[S.IMPRESSIONS].to(device, torch.float32),
        )


def make_converter(spark: SparkSession, examples: DataFrame, cache_dir_url: str, layout: PetastormLayout):
    """Materialise the training columns into Petastorm's cache and return the converter.

    Petastorm shards by Parquet row group, so unequal files give unequal shards, and with
    endless epochs a rank on a small shard repeats it and overfits. A round-robin repartition
    into a multiple of the world size gives every rank the same number of rows, and the row
    group size gives every rank several row groups (see :mod:`ulr_spark.sizing`).
    """
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, cache_dir_url)
    columns = examples.select(*S.TRAINING_COLUMNS)
    return make_spark_converter(columns.repartition(layout.files), parquet_row_group_size_bytes=layout.row_group_bytes)


@contextlib.contextmanager
def shard_batches(
    converter, batch_size: int, rank: int, world_size: int, max_slate_size: int, device: torch.device, seed: int
) -> Iterator[Iterator[SlateBatch]]:
    """An endless, shuffled stream of this rank's batches (epochs are counted in steps).

    ``seed`` must be the same on every rank: Petastorm also uses it to assign row groups to
    shards, and different seeds would give overlapping shards.
    """
    with converter.make_torch_dataloader(
        seed=seed,
        batch_size=batch_size,
        num_epochs=None,
        cur_shard=rank,
        shard_count=world_size,
        shuffling_queue_capacity=batch_size * 8,
        workers_count=1,
    ) as loader:
        yield (SlateBatch.from_petastorm(b, max_slate_size, device) for b in loader)
