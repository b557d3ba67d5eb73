"""The driver side of training: it plans the job (the shape of the examples, one
:class:`~ulr_spark.training.worker.TrainJob` per model), caches the examples for Petastorm,
launches :func:`~ulr_spark.training.worker.train_worker` with ``TorchDistributor``, and
writes the learned examination curves to Delta. What runs in each torch process is in
:mod:`ulr_spark.training.worker`.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ulr_spark import schema
from ulr_spark.config import Config
from ulr_spark.io.artifacts import Artifact, artifact_dir, load_model, read_artifact
from ulr_spark.io.delta import Provenance, read_table, replace_rows, sql_string
from ulr_spark.io.sizing import is_shared_storage, petastorm_layout, table_bytes
from ulr_spark.io.spark import describe_step
from ulr_spark.models.curves import PageSample, examination_curve
from ulr_spark.models.registry import MODEL_CLASSES
from ulr_spark.models.spec import ModelSpec
from ulr_spark.training.loaders import make_converter
from ulr_spark.training.worker import TrainJob, train_worker


@dataclass(frozen=True)
class ExamplesShape:
    rows: int
    num_features: int
    max_slate_size: int
    contexts: dict[int, str]


def describe_examples(examples: DataFrame) -> ExamplesShape:
    stats = examples.agg(
        F.count(F.lit(1)).alias("rows"),
        F.max(F.size(schema.POSITIONS)).alias("k"),
        F.max(F.size(schema.FEATURES)).alias("kd"),
    ).first()
    if not stats["rows"]:
        raise ValueError("train: the examples table is empty; run build-examples on a non-empty log first")
    contexts = {r[schema.CONTEXT_ID]: r[schema.CONTEXT_KEY] for r in examples.select(schema.CONTEXT_ID, schema.CONTEXT_KEY).distinct().collect()}
    return ExamplesShape(
        rows=int(stats["rows"]),
        num_features=int(stats["kd"]) // int(stats["k"]),
        max_slate_size=int(stats["k"]),
        contexts=contexts,
    )


def runs_on_cluster(spark: SparkSession) -> bool:
    """The session's master decides, not the config: spark-submit may have chosen another."""
    return not spark.sparkContext.master.startswith("local")


def cpu_threads_per_process(spark: SparkSession, num_processes: int) -> int:
    """Locally the driver's cores are shared by the processes; on a cluster each process is one
    barrier task and owns ``spark.task.cpus`` cores of its executor."""
    if runs_on_cluster(spark):
        return int(spark.conf.get("spark.task.cpus", "1"))
    return max(1, (os.cpu_count() or 1) // num_processes)


def _run_distributed(spark: SparkSession, config: Config, jobs: list[TrainJob], converter) -> None:
    from pyspark.ml.torch.distributor import TorchDistributor

    tc = config.train
    local = not runs_on_cluster(spark)
    print(
        f"train: TorchDistributor(num_processes={tc.num_processes}, local_mode={local}, use_gpu={tc.use_gpu}) "
        f"on {spark.sparkContext.master}",
        flush=True,
    )
    TorchDistributor(num_processes=tc.num_processes, local_mode=local, use_gpu=tc.use_gpu).run(
        train_worker, jobs, converter
    )
    for job in jobs:
        if not os.path.exists(os.path.join(job.artifact_path, "model.json")):
            raise RuntimeError(f"train: the distributed job ended without writing {job.artifact_path}")


def learned_bias_curves(model_artifact: Artifact, pages: PageSample, run_id: str) -> pd.DataFrame:
    """The examination curve of every context the model knows, as rows of the bias table."""
    model = load_model(model_artifact)
    rows = []
    for context_id, context_key in sorted(model_artifact.contexts.items()):
        curve = examination_curve(model, pages, context_id).numpy()
        for slot, value in enumerate(curve, start=1):
            if np.isfinite(value):
                rows.append((model_artifact.spec.name, run_id, context_key, slot, float(value)))
    return pd.DataFrame(rows, columns=[schema.MODEL, schema.RUN_ID, schema.CONTEXT_KEY, schema.POSITION, schema.EXAMINATION])


def sample_pages(examples: DataFrame, shape: ExamplesShape, sample_slates: int, seed: int) -> PageSample:
    """A random sample of logged slates, to read the learned curves on."""
    fraction = min(1.0, 1.2 * sample_slates / shape.rows)
    rows = (
        examples.sample(fraction=fraction, seed=seed)
        .limit(sample_slates)
        .select(schema.POSITIONS, schema.FEATURES, schema.CONTEXT_ID)
        .toPandas()
    )
    k, d = shape.max_slate_size, shape.num_features
    return PageSample(
        features=torch.from_numpy(np.stack(rows[schema.FEATURES].to_numpy()).astype(np.float32).reshape(-1, k, d)),
        positions=torch.from_numpy(np.stack(rows[schema.POSITIONS].to_numpy()).astype(np.int64)),
        context_ids=torch.from_numpy(rows[schema.CONTEXT_ID].to_numpy().astype(np.int64)),
    )


def model_spec(config: Config, name: str, shape: ExamplesShape) -> ModelSpec:
    """The spec of a configured model name (an architecture or a named variant)."""
    architecture, options = config.train.variant(name)
    return ModelSpec(
        name=name,
        architecture=architecture,
        num_features=shape.num_features,
        max_slate_size=shape.max_slate_size,
        num_contexts=max(shape.contexts) + 1,
        hidden_sizes=list(config.train.hidden_sizes),
        grid_columns=config.examples.grid_columns,
        **dataclasses.asdict(options),
    )


def train(config: Config, spark: SparkSession, run_id: str) -> list[str]:
    """Train every configured model on the examples; returns the artifact paths."""
    tc, tables = config.train, config.tables
    describe_step(spark, "read the shape of the examples")
    examples = read_table(spark, tables.path("examples"))
    shape = describe_examples(examples)
    steps = max(1, math.ceil(shape.rows / (tc.batch_size * tc.num_processes)))
    print(
        f"train: {shape.rows} slates, {shape.num_features} features, {shape.max_slate_size} slots, "
        f"{len(shape.contexts)} context(s); {tc.num_processes} process(es) x {steps} steps x {tc.epochs} epochs"
    )
    cache_dir = tables.path("petastorm_cache")
    cache_url = cache_dir if "://" in cache_dir else "file://" + cache_dir
    if runs_on_cluster(spark) and not is_shared_storage(cache_url):
        print(
            f"train: WARNING tables.petastorm_cache is {cache_url}, a local path, on a cluster: every training "
            "process reads it, so it must be shared storage (dbfs:/, s3a://, abfss://, hdfs://) or a shared mount"
        )
    layout = petastorm_layout(table_bytes(spark, tables.path("examples")), tc.num_processes, config.examples.partitions)
    describe_step(spark, "cache the examples for Petastorm")
    converter = make_converter(spark, examples, cache_url, layout, shape.max_slate_size)
    jobs = []
    for name in tc.models:
        card = {
            "run_id": run_id,
            "model": name,
            "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "features_column": config.columns.features,
            "contexts": {str(k): v for k, v in shape.contexts.items()},
            "config": config.to_dict(),
            "config_fingerprint": config.fingerprint(),
            "examples_rows": shape.rows,
            "torch_version": torch.__version__,
        }
        jobs.append(
            TrainJob(
                spec=model_spec(config, name, shape),
                epochs=tc.epochs,
                steps_per_epoch=steps,
                batch_size=tc.batch_size,
                learning_rate=tc.learning_rate,
                weight_decay=tc.weight_decay,
                seed=tc.seed,
                use_gpu=tc.use_gpu,
                cpu_threads=cpu_threads_per_process(spark, tc.num_processes),
                artifact_path=artifact_dir(tables.path("models"), run_id, name),
                card=card,
            )
        )
    curves = []
    try:
        pages = sample_pages(examples, shape, tc.bias_curve_sample, tc.seed)
        describe_step(spark, f"train {', '.join(tc.models)} with TorchDistributor")
        _run_distributed(spark, config, jobs, converter)
        for job in jobs:
            if MODEL_CLASSES[job.spec.architecture].has_bias_tower:
                curves.append(learned_bias_curves(read_artifact(job.artifact_path), pages, run_id))
    finally:
        converter.delete()
    if curves:
        describe_step(spark, "write the learned bias curves")
        bias = spark.createDataFrame(pd.concat(curves, ignore_index=True)).withColumn(
            schema.TRAINED_AT, F.current_timestamp()
        )
        replace_rows(
            bias.coalesce(1), tables.path("bias_curves"), "bias_curves", Provenance.of(config, run_id, "train", tc.models),
            f"{schema.RUN_ID} = {sql_string(run_id)}",
        )
    return [job.artifact_path for job in jobs]
