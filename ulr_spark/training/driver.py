"""The driver side of training: it plans the job (the shape of the examples, one
:class:`~ulr_spark.training.worker.TrainJob` per model), caches the examples for Petastorm,
launches :func:`~ulr_spark.training.worker.train_worker` with ``TorchDistributor``, and
writes the learned examination curves to Delta. What runs in each torch process is in
:mod:`ulr_spark.training.worker`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ulr_spark import __version__, schema
from ulr_spark.config import Config
from ulr_spark.features.encoding import FeatureEncoder, encoder_of_examples
from ulr_spark.io.artifacts import artifact_complete, check_run_id, publish_run, read_artifact, staging_run_dir
from ulr_spark.io.delta import Provenance, read_table, replace_rows, sql_string, table_version
from ulr_spark.io.sizing import is_shared_storage, petastorm_layout, table_bytes
from ulr_spark.io.spark import cpu_threads_per_process, describe_step, runs_on_cluster
from ulr_spark.io.storage import remove_tree
from ulr_spark.models.registry import MODEL_CLASSES
from ulr_spark.models.spec import ModelSpec
from ulr_spark.training import checkpoints
from ulr_spark.training.loaders import input_mode, make_converter
from ulr_spark.training.samples import learned_bias_curves, sample_pages, validation_arrays, warn_if_mixem_rows_mix_clicks
from ulr_spark.training.warm_start import resolve_init_run, resumed_version, warm_start_states, windowed
from ulr_spark.training.worker import TrainJob, train_worker

# A training row carries at most this many times the mean row's impressions: heavier merged
# rows are split into equal pieces before training (docs/design.md, "Training"), which adds at
# most a quarter more rows and keeps one hot slate from dominating the step it lands in.
HEAVY_ROW_FACTOR = 4
SPLIT_VALIDATION = schema.SPLIT_VALIDATION


class TrainingFailedError(RuntimeError):
    """Distributed training failed; no model of the run was published."""


@dataclass(frozen=True)
class ExamplesShape:
    rows: int
    num_features: int
    max_slate_size: int
    contexts: dict[int, str]
    impressions: int = 0  # requests, summed over the rows
    slot_impressions: int = 0  # impressions x filled slots, summed over the rows
    # Slots the log shows in each context: the only cells an examination curve is written for.
    observed_slots: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    # Impressions of each observed (context id, slot) cell.
    cell_impressions: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)
    # Size of the context tables: 1 + the largest context id of any split (0: from ``contexts``).
    num_contexts: int = 0

    @property
    def context_slots(self) -> int:
        return self.num_contexts or max(self.contexts) + 1

    @property
    def heavy_row_cap(self) -> int:
        """Impressions one training row may carry (see HEAVY_ROW_FACTOR)."""
        return max(1, math.ceil(HEAVY_ROW_FACTOR * self.impressions / max(self.rows, 1)))


def describe_examples(examples: DataFrame) -> ExamplesShape:
    """The shape of the examples (two aggregations over the table, which is much smaller than
    the log).

    Raises:
        ValueError: the table is empty, or holds no click (nothing can be identified).
    """
    stats = examples.agg(
        F.count(F.lit(1)).alias("rows"),
        F.max(F.size(schema.POSITIONS)).alias("k"),
        F.sum(schema.IMPRESSIONS).alias("impressions"),
        F.sum(F.col(schema.IMPRESSIONS) * F.col(schema.SLATE_SIZE)).alias("slot_impressions"),
        F.sum(F.aggregate(schema.CLICKS, F.lit(0).cast("long"), lambda acc, c: acc + c)).alias("clicks"),
    ).first()
    if not stats["rows"]:
        raise ValueError("train: the examples table is empty; run build-examples on a non-empty log first")
    if not stats["clicks"]:
        raise ValueError("train: the examples hold no click; a log without clicks cannot identify relevance or bias")
    # Every row holds k x D features (build-examples checks it): one row gives D without
    # decoding the whole column.
    kd = examples.select(F.size(schema.FEATURES).alias("kd")).first()["kd"]
    cells = (
        examples.select(schema.CONTEXT_ID, schema.CONTEXT_KEY, schema.IMPRESSIONS, F.explode(schema.POSITIONS).alias("slot"))
        .where(F.col("slot") > 0)
        .groupBy(schema.CONTEXT_ID, schema.CONTEXT_KEY, "slot")
        .agg(F.sum(schema.IMPRESSIONS).alias("n"))
        .collect()
    )
    observed: dict[int, list[int]] = {}
    contexts: dict[int, str] = {}
    cell_impressions: dict[tuple[int, int], int] = {}
    for r in cells:
        observed.setdefault(r[schema.CONTEXT_ID], []).append(int(r["slot"]))
        contexts[r[schema.CONTEXT_ID]] = r[schema.CONTEXT_KEY]
        cell_impressions[(int(r[schema.CONTEXT_ID]), int(r["slot"]))] = int(r["n"])
    return ExamplesShape(
        rows=int(stats["rows"]),
        num_features=int(kd) // int(stats["k"]),
        max_slate_size=int(stats["k"]),
        contexts=contexts,
        impressions=int(stats["impressions"]),
        slot_impressions=int(stats["slot_impressions"]),
        observed_slots={c: sorted(slots) for c, slots in observed.items()},
        cell_impressions=cell_impressions,
    )


def training_rows(examples: DataFrame, cap: int) -> int:
    """Rows the trainer sees once heavy rows are split into pieces of at most ``cap``."""
    pieces = F.greatest(F.lit(1), F.ceil(F.col(schema.IMPRESSIONS) / F.lit(cap)))
    return int(examples.agg(F.sum(pieces).alias("n")).first()["n"])


def _run_distributed(spark: SparkSession, config: Config, jobs: list[TrainJob], converter) -> None:
    from pyspark.ml.torch.distributor import TorchDistributor

    tc = config.train
    local = not runs_on_cluster(spark)
    print(
        f"train: TorchDistributor(num_processes={tc.num_processes}, local_mode={local}, use_gpu={tc.use_gpu}) "
        f"on {spark.sparkContext.master}",
        flush=True,
    )
    try:
        TorchDistributor(num_processes=tc.num_processes, local_mode=local, use_gpu=tc.use_gpu).run(train_worker, jobs, converter)
    except Exception as error:
        raise TrainingFailedError(
            f"train: the distributed training failed ({type(error).__name__}; the workers' own error is printed above); "
            "nothing was published, the previous runs are unchanged; continue this run from its last checkpoint with "
            f"`ulr-spark train --resume --run-id {jobs[0].card['run_id']}`"
        ) from error
    for job in jobs:
        if not artifact_complete(job.artifact_path):
            raise TrainingFailedError(f"train: the distributed job ended without writing {job.artifact_path}; nothing was published")


def model_spec(config: Config, name: str, shape: ExamplesShape, encoder: Optional[FeatureEncoder] = None) -> ModelSpec:
    """The spec of a configured model name (an architecture or a named variant); the feature
    layout and the page layout come from the examples' encoder when they have one."""
    architecture, options = config.train.variant(name)
    if encoder is not None:
        return ModelSpec(
            name=name, architecture=architecture, num_features=shape.num_features, max_slate_size=shape.max_slate_size,
            num_contexts=shape.context_slots, hidden_sizes=list(config.train.hidden_sizes),
            grid_columns=encoder.grid_columns, categorical_buckets=encoder.categorical_buckets,
            embedding_dims=encoder.embedding_dims, **dataclasses.asdict(options),
        )
    return ModelSpec(
        name=name,
        architecture=architecture,
        num_features=shape.num_features,
        max_slate_size=shape.max_slate_size,
        num_contexts=shape.context_slots,
        hidden_sizes=list(config.train.hidden_sizes),
        grid_columns=config.examples.grid_columns,
        **dataclasses.asdict(options),
    )


def train(config: Config, spark: SparkSession, run_id: str, resume: bool = False) -> list[str]:
    """Train every configured model on the examples; returns the artifact paths.

    The examples are read at one pinned table version (recorded in each model card). The
    models are trained into a staging folder and published (:func:`publish_run`) only when
    every model is trained and its curves are written, so a failed run is never "the latest".

    Checkpoints are written as training goes (:mod:`ulr_spark.training.checkpoints`);
    ``resume`` continues the run ``run_id`` from them, on the examples version it started with.

    Raises:
        ValueError: the examples are empty, hold no click, or have fewer training rows than
            ``train.num_processes`` (each process needs at least one); ``resume`` with another
            config than the run started with; a warm start from an incompatible model.
        FileNotFoundError: ``resume`` of a run without checkpoints; ``train.init_from`` names a
            run that did not finish.
        TrainingFailedError: the distributed training failed; nothing was published.
    """
    tc, tables = config.train, config.tables
    check_run_id(run_id)
    describe_step(spark, "read the shape of the examples")
    examples_path = tables.path("examples")
    checkpoint_run = checkpoints.join(tables.path("checkpoints"), run_id)
    if resume:  # the examples version and the warm start the run began with
        version, init_run = resumed_version(checkpoint_run, config, run_id)
    else:
        version, init_run = table_version(spark, examples_path), resolve_init_run(tables.path("models"), tc.init_from, run_id)
        checkpoints.remove(checkpoint_run)  # a rerun of an id starts over
        plan = {"examples_version": version, "config_fingerprint": config.fingerprint(), "init_from": init_run}
        checkpoints.write_plan(checkpoint_run, plan)
    pinned = read_table(spark, examples_path, version)
    all_examples = windowed(pinned, tc.window_days)
    encoder = encoder_of_examples(all_examples)
    # Only the training split is trained on; the validation split stops training early, and the
    # test split is left to evaluate (examples built before splits existed are all training).
    examples, validation = all_examples, None
    if schema.SPLIT in all_examples.columns:
        examples = all_examples.where(F.col(schema.SPLIT) == schema.SPLIT_TRAIN)
        validation = all_examples.where(F.col(schema.SPLIT) == SPLIT_VALIDATION)
    shape = describe_examples(examples)
    # Context ids are numbered over every split: a context seen only in validation or test
    # must still have a row in the bias tables. One aggregation also counts the validation rows.
    is_validation = F.col(schema.SPLIT) == SPLIT_VALIDATION if validation is not None else F.lit(False)
    extra = all_examples.agg(F.max(schema.CONTEXT_ID).alias("last"), F.count(F.when(is_validation, 1)).alias("validation")).first()
    last_context = extra["last"] if tc.window_days == 0 else pinned.agg(F.max(schema.CONTEXT_ID)).first()[0]  # the window may not show every context
    shape = dataclasses.replace(shape, num_contexts=max(int(last_context or 0), max(shape.contexts)) + 1)
    cap = shape.heavy_row_cap
    rows = training_rows(examples, cap)
    if rows < tc.num_processes:
        raise ValueError(
            f"train: the examples hold {rows} training row(s), fewer than train.num_processes={tc.num_processes}; every "
            f"process needs at least one: set train.num_processes to at most {rows}, or build examples from a larger log"
        )
    # Training length is counted in impressions: an epoch is as many steps of batch_size rows
    # per process as the log has impressions, merged or not, so merging identical slates
    # changes the size of the data, not how far the model is trained.
    steps = max(1, math.ceil(shape.impressions / (tc.batch_size * tc.num_processes)))
    # The loss of a step is divided by one constant, the slot impressions a batch of uniformly
    # drawn rows holds on average, so every impression weighs the same whatever batch it lands in.
    normaliser = tc.batch_size * shape.slot_impressions / rows
    in_memory, why = input_mode(tc.input, rows, tc.num_processes, shape.max_slate_size, shape.num_features, tc.memory_limit_mb)
    print(
        f"train: examples version {version}: {shape.rows} distinct slates shown in {shape.impressions} requests "
        f"({rows} training rows of at most {cap} requests each), {shape.num_features} features, {shape.max_slate_size} "
        f"slots, {len(shape.contexts)} context(s); {tc.num_processes} process(es) x {steps} steps of {tc.batch_size} rows "
        f"x {tc.epochs} epochs (an epoch: as many rows as there are requests); input: {why}"
    )
    warn_if_mixem_rows_mix_clicks(config, examples)
    cache_dir = tables.path("petastorm_cache")
    cache_url = cache_dir if "://" in cache_dir else "file://" + cache_dir
    for key, where in (("petastorm_cache", cache_url), ("checkpoints", tables.path("checkpoints"))):
        if runs_on_cluster(spark) and not is_shared_storage(where if "://" in where else "file://" + where):
            print(
                f"train: WARNING tables.{key} is {where}, a local path, on a cluster: every training process reads "
                "it, so it must be shared storage (dbfs:/, s3a://, abfss://, hdfs://) or a shared mount"
            )
    layout = petastorm_layout(table_bytes(spark, examples_path), tc.num_processes, config.examples.partitions, rows)
    staging = staging_run_dir(tables.path("models"), run_id)
    held_out = validation_arrays(validation, shape, tc.seed, extra["validation"]) if validation is not None else None
    print(
        f"train: {held_out['positions'].shape[0]} validation slate(s); early stopping "
        + (f"after {tc.early_stopping_patience} epoch(s) without a better validation loss" if tc.early_stopping_patience else "off")
        if held_out is not None else "train: no validation split (examples.split.validation_share): every epoch is trained"
    )
    specs = [model_spec(config, name, shape, encoder) for name in tc.models]
    init_states = warm_start_states(tables.path("models"), init_run, specs, encoder, shape.contexts) if init_run else {}
    jobs = []
    for name, spec in zip(tc.models, specs):
        card = {
            "run_id": run_id,
            "model": name,
            "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "features_column": config.columns.features,
            "feature_encoder": json.loads(encoder.to_json()) if encoder is not None else None,
            "contexts": {str(k): v for k, v in shape.contexts.items()},
            "config": config.to_dict(),
            "config_fingerprint": config.fingerprint(),
            "examples_path": examples_path,
            "examples_version": version,
            "examples_rows": shape.rows,
            "training_rows": rows,
            "impressions_per_epoch": shape.impressions,
            "heavy_row_cap": cap,
            "input": "memory" if in_memory else "stream",
            "loss_normaliser": normaliser,
            "init_from": init_run if name in init_states else None,
            "torch_version": torch.__version__,
            "ulr_spark_version": __version__,
        }
        jobs.append(
            TrainJob(
                spec=spec,
                epochs=tc.epochs,
                steps_per_epoch=steps,
                batch_size=tc.batch_size,
                learning_rate=tc.learning_rate,
                weight_decay=tc.weight_decay,
                seed=tc.seed,
                use_gpu=tc.use_gpu,
                cpu_threads=cpu_threads_per_process(spark, tc.num_processes),
                artifact_path=os.path.join(staging, name),
                card=card,
                loss_normaliser=normaliser,
                validation=held_out,
                early_stopping_patience=tc.early_stopping_patience,
                embedding_learning_rate=tc.embedding_learning_rate,
                learning_rate_schedule=tc.learning_rate_schedule,
                cell_impressions=dict(shape.cell_impressions),
                checkpoint_dir=checkpoints.join(checkpoint_run, name),
                checkpoint_every_steps=tc.checkpoint_every_steps,
                resume=resume,
                init_state=init_states.get(name),
                in_memory=in_memory,
            )
        )
    curves = []
    try:
        describe_step(spark, "cache the examples for Petastorm")
        converter = make_converter(spark, examples, cache_url, layout, shape.max_slate_size, cap)
        try:
            pages = sample_pages(examples, shape, tc.bias_curve_sample, tc.seed)
            describe_step(spark, f"train {', '.join(tc.models)} with TorchDistributor")
            _run_distributed(spark, config, jobs, converter)
            for job in jobs:
                if MODEL_CLASSES[job.spec.architecture].has_bias_tower:
                    curves.append(learned_bias_curves(
                        read_artifact(job.artifact_path), pages, shape, run_id, tc.bias_curve_bootstrap, tc.seed
                    ))
        finally:
            converter.delete()
        curves = [c for c in curves if len(c)]  # a sample may hold no page of any context when the log is tiny
        if curves:
            describe_step(spark, "write the learned bias curves")
            bias = spark.createDataFrame(pd.concat(curves, ignore_index=True)).withColumn(
                schema.TRAINED_AT, F.current_timestamp()
            )
            for bound in (schema.EXAMINATION_LOW, schema.EXAMINATION_HIGH):
                bias = bias.withColumn(bound, F.when(~F.isnan(bound), F.col(bound)).cast("double"))
            replace_rows(
                bias.coalesce(1), tables.path("bias_curves"), "bias_curves", Provenance.of(config, run_id, "train", tc.models),
                f"{schema.RUN_ID} = {sql_string(run_id)}", merge_schema=True,
            )
        record = {"models": list(tc.models), "examples_path": examples_path, "examples_version": version}
        final = publish_run(staging, tables.path("models"), run_id, record)
        checkpoints.remove(checkpoint_run)  # the artifact is now the finished run's checkpoint
    finally:
        remove_tree(staging)
    return [os.path.join(final, job.spec.name) for job in jobs]
