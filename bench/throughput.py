"""Side-by-side throughput measurements, each against a plain-PyTorch reference in one run.

- Training: the same model, batch size and step (``ulr_spark.training.worker.train_step``) fed
  by each of the trainer's inputs (``train.input``: Petastorm's stream, and the shard read once
  into tensors) and by tensors already in memory built here (the reference).
- Scoring: ``ulr_spark.scoring.score_pairs`` in Spark (read Delta, Arrow to the Python workers,
  write Delta) against the same relevance tower over the same Parquet files read with pyarrow
  and written with pyarrow, in one process using every core.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time

import numpy as np
import torch

from ulr_spark import schema
from ulr_spark.config import Config
from ulr_spark.inference import broadcast_models, models_from_broadcast
from ulr_spark.io.artifacts import load_model
from ulr_spark.io.delta import STATS_COLUMNS_PROPERTY, read_table
from ulr_spark.io.sizing import petastorm_layout, table_bytes
from ulr_spark.models.registry import TrainingObjective, build_model
from ulr_spark.scoring import SCORE_ARROW_SCHEMA, SCORE_SCHEMA, feature_matrix, score_pairs
from ulr_spark.training.driver import describe_examples, model_spec, training_rows
from ulr_spark.training.loaders import SlateBatch, input_mode, make_converter, memory_batches, shard_batches
from ulr_spark.training.worker import train_step


def _timed_steps(model, batches, steps: int, warmup: int, normaliser: float) -> float:
    """Slates per second over ``steps`` steps after ``warmup`` steps."""
    objective = TrainingObjective(model)
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-3)
    for _ in range(warmup):
        batch = next(batches)
        train_step(objective, optimizer, batch, normaliser)
    # A GPU runs the steps asynchronously: the clock starts and stops on an idle device.
    sync = torch.cuda.synchronize if batch.positions.is_cuda else (lambda: None)
    sync()
    slates, started = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        train_step(objective, optimizer, batch, normaliser)
        slates += batch.positions.shape[0]
    sync()
    return slates / (time.perf_counter() - started)


def _in_memory_batches(examples, batch_size: int, k: int, seed: int):
    frame = examples.select(*schema.TRAINING_COLUMNS).toPandas()
    n = len(frame)
    tensors = {
        schema.FEATURES: torch.from_numpy(np.stack(frame[schema.FEATURES].to_numpy()).astype(np.float32)),
        schema.POSITIONS: torch.from_numpy(np.stack(frame[schema.POSITIONS].to_numpy()).astype(np.int32)),
        schema.CONTEXT_ID: torch.from_numpy(frame[schema.CONTEXT_ID].to_numpy().astype(np.int32)),
        schema.CLICKS: torch.from_numpy(np.stack(frame[schema.CLICKS].to_numpy()).astype(np.int32)),
        schema.IMPRESSIONS: torch.from_numpy(frame[schema.IMPRESSIONS].to_numpy()),
    }
    d = tensors[schema.FEATURES].shape[1] // k
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield SlateBatch(
                features=tensors[schema.FEATURES][index].view(-1, k, d),
                positions=tensors[schema.POSITIONS][index].long(),
                context_ids=tensors[schema.CONTEXT_ID][index].long(),
                clicks=tensors[schema.CLICKS][index].float(),
                impressions=tensors[schema.IMPRESSIONS][index].float(),
            )


def one_process_cache(spark, config: Config, suffix: str):
    """(examples, shape, spec, converter, cache folder, loss normaliser) of one training process
    on the examples table: its Petastorm cache as the trainer writes it, for timed steps."""
    tables, tc = config.tables, config.train
    examples = read_table(spark, tables.path("examples"))
    shape = describe_examples(examples)
    spec = model_spec(config, tc.models[0], shape)
    cache = tables.path("petastorm_cache") + suffix
    layout = petastorm_layout(table_bytes(spark, tables.path("examples")), 1, 1)
    converter = make_converter(spark, examples, "file://" + cache, layout, shape.max_slate_size, shape.heavy_row_cap)
    # The trainer's constant (ulr_spark.training.driver.train): slot impressions per batch.
    normaliser = tc.batch_size * shape.slot_impressions / training_rows(examples, shape.heavy_row_cap)
    return examples, shape, spec, converter, cache, normaliser


def training_throughput(spark, config: Config, steps: int, warmup: int, rounds: int = 3, threads: int = 1) -> dict:
    """Slates per second of one training process: Petastorm-fed against in-memory, measured in
    alternating rounds (the machine's speed drifts between minutes); the ratio is the median."""
    torch.set_num_threads(threads)
    tc = config.train
    examples, shape, spec, converter, cache, normaliser = one_process_cache(spark, config, "_bench")
    in_memory = _in_memory_batches(examples, tc.batch_size, shape.max_slate_size, tc.seed)
    rows = training_rows(examples, shape.heavy_row_cap)
    chosen, why = input_mode(tc.input, rows, tc.num_processes, shape.max_slate_size, shape.num_features, tc.memory_limit_mb)
    cpu = torch.device("cpu")
    petastorm_rates, loaded_rates, memory_rates, load_seconds = [], [], [], []
    try:
        for _ in range(rounds):
            torch.manual_seed(tc.seed)
            with shard_batches(converter, tc.batch_size, 0, 1, shape.max_slate_size, cpu, tc.seed) as b:
                petastorm_rates.append(_timed_steps(build_model(spec), b, steps, warmup, normaliser))
            torch.manual_seed(tc.seed)
            started = time.perf_counter()
            with memory_batches(converter, tc.batch_size, 0, 1, shape.max_slate_size, cpu, tc.seed) as b:
                load_seconds.append(time.perf_counter() - started)
                loaded_rates.append(_timed_steps(build_model(spec), b, steps, warmup, normaliser))
            torch.manual_seed(tc.seed)
            memory_rates.append(_timed_steps(build_model(spec), in_memory, steps, warmup, normaliser))
    finally:
        converter.delete()
        shutil.rmtree(cache, ignore_errors=True)
    ratios = [p / m for p, m in zip(petastorm_rates, memory_rates)]
    loaded_ratios = [p / m for p, m in zip(loaded_rates, memory_rates)]
    return {
        "model": spec.name,
        "batch_size": tc.batch_size,
        "steps": steps,
        "rounds": rounds,
        "examples_rows": shape.rows,
        "training_rows": rows,
        "torch_threads": threads,
        "input_chosen": "memory" if chosen else "stream",
        "input_reason": why,
        "petastorm_slates_per_s": float(np.median(petastorm_rates)),
        "memory_input_slates_per_s": float(np.median(loaded_rates)),
        "memory_input_load_seconds": float(np.median(load_seconds)),
        "in_memory_slates_per_s": float(np.median(memory_rates)),
        "ratios": ratios,
        "ratio": float(np.median(ratios)),
        "memory_input_ratios": loaded_ratios,
        "memory_input_ratio": float(np.median(loaded_ratios)),
    }


def parquet_files(spark, path: str) -> list[str]:
    """The Parquet files of a Delta table's current snapshot, as local paths."""
    from urllib.parse import unquote, urlparse

    return sorted(unquote(urlparse(f).path) if f.startswith("file:") else f for f in read_table(spark, path).inputFiles())


def score_throughput(spark, config: Config, artifact, output_root: str) -> dict:
    """Rows per second: Spark's scoring stage against plain PyTorch with pyarrow I/O, both on
    the impression log's rows (query_id, item_id, features) and both writing their output."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    cols = config.columns
    log_path = config.tables.path("impressions")
    rows = read_table(spark, log_path).count()
    batch_size = config.score.batch_size

    def spark_scoring(write: bool) -> float:
        started = time.perf_counter()
        pairs = read_table(spark, log_path).select(
            _alias(cols.query_id, schema.QUERY_ID), _alias(cols.item_id, schema.ITEM_ID), _alias(cols.features, schema.FEATURES)
        )
        scored = score_pairs(pairs, spark, [artifact], batch_size).write
        if write:  # as the scores table: statistics of its filter columns only (here: model)
            scored.format("delta").option(STATS_COLUMNS_PROPERTY, schema.MODEL).mode("overwrite").save(os.path.join(output_root, "scores_spark"))
        else:
            scored.format("noop").mode("overwrite").save()
        return time.perf_counter() - started

    def python_reads_files() -> float:
        """Profile, not a product path: the Python workers read the log's files themselves (one
        task per file), so no row crosses from the JVM to Python; nothing is written."""
        started = time.perf_counter()
        files = parquet_files(spark, log_path)
        broadcast = broadcast_models(spark, [artifact])
        names = [cols.query_id, cols.item_id, cols.features]

        def apply(batches):
            model = models_from_broadcast(broadcast)[0]
            for paths in batches:
                for path in paths.column(0).to_pylist():
                    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=names):
                        with torch.no_grad():
                            scores = model.relevance(feature_matrix(batch.column(cols.features), artifact.spec.num_features))
                        yield pa.RecordBatch.from_arrays(
                            [batch.column(cols.query_id).cast(pa.string()), batch.column(cols.item_id).cast(pa.string()),
                             pa.array([artifact.spec.name] * batch.num_rows, pa.string()), pa.array(scores.double().numpy())],
                            schema=SCORE_ARROW_SCHEMA,
                        )

        paths = spark.createDataFrame([(f,) for f in files], "path string").repartition(len(files))
        paths.mapInArrow(apply, SCORE_SCHEMA).write.format("noop").mode("overwrite").save()
        return time.perf_counter() - started

    threads = os.cpu_count() or 1

    def torch_scoring(write: bool) -> float:
        torch.set_num_threads(threads)
        started = time.perf_counter()
        model = load_model(artifact).eval()
        dataset = ds.dataset(parquet_files(spark, log_path), format="parquet")
        d = artifact.spec.num_features
        out = os.path.join(output_root, "scores_torch.parquet")
        with contextlib.ExitStack() as stack:
            writer = stack.enter_context(pq.ParquetWriter(out, SCORE_ARROW_SCHEMA)) if write else None
            for batch in dataset.to_batches(columns=[cols.query_id, cols.item_id, cols.features], batch_size=batch_size):
                features = feature_matrix(batch.column(cols.features), d)
                with torch.no_grad():
                    scores = model.relevance(features).double().numpy()
                if writer is not None:
                    writer.write_batch(
                        pa.RecordBatch.from_arrays(
                            [batch.column(cols.query_id), batch.column(cols.item_id),
                             pa.array([artifact.spec.name] * batch.num_rows, pa.string()), pa.array(scores)],
                            schema=SCORE_ARROW_SCHEMA,
                        )
                    )
        return time.perf_counter() - started

    # Written output first (the stage as it runs), then scoring alone, to see what the write costs.
    spark_seconds, torch_seconds = spark_scoring(True), torch_scoring(True)
    spark_nowrite, torch_nowrite = spark_scoring(False), torch_scoring(False)
    files_nowrite = python_reads_files()
    shutil.rmtree(os.path.join(output_root, "scores_spark"), ignore_errors=True)
    os.remove(os.path.join(output_root, "scores_torch.parquet"))
    return {
        "rows": rows,
        "spark_seconds": spark_seconds,
        "torch_seconds": torch_seconds,
        "torch_threads": threads,
        "spark_rows_per_s": rows / spark_seconds,
        "torch_rows_per_s": rows / torch_seconds,
        "ratio": torch_seconds / spark_seconds,
        "spark_seconds_without_write": spark_nowrite,
        "torch_seconds_without_write": torch_nowrite,
        "ratio_without_write": torch_nowrite / spark_nowrite,
        "batch_size": batch_size,
        "python_reads_files_seconds_without_write": files_nowrite,
    }


def _alias(column: str, name: str):
    from pyspark.sql import functions as F

    return F.col(column).alias(name)
