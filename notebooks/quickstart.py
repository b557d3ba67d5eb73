# Databricks notebook source
# MAGIC %md
# MAGIC # ulr-spark quickstart
# MAGIC Simulates a click log with a known truth, builds examples, trains the configured models
# MAGIC (the naive and the additive two-tower model in `conf/demo.yaml`), scores every (query, item)
# MAGIC pair and shows the metrics of the run. All logic lives in the `ulr_spark` library; this
# MAGIC notebook only calls it.
# MAGIC
# MAGIC Widgets: `config` (a YAML file; relative paths are looked up from the working directory
# MAGIC upwards), `tables_root` (where the Delta tables and models go), `overrides` (`section.key=value`,
# MAGIC separated by commas or newlines, e.g. `train.epochs=3, simulate.num_requests=20000`).

# COMMAND ----------

# MAGIC %pip install /dbfs/path/to/ulr_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

from ulr_spark.notebook import add_widgets, config_from_widgets, run_metrics
from ulr_spark.pipeline import run_all

add_widgets(dbutils)  # noqa: F821  (config, tables_root, overrides)

# COMMAND ----------

config = config_from_widgets(dbutils)  # noqa: F821

# COMMAND ----------

# MAGIC %md
# MAGIC Every stage in order under one new run id: simulate, build-examples, train (TorchDistributor),
# MAGIC score, evaluate. It prints each stage's summary and the metrics table.

# COMMAND ----------

run_id = run_all(config, spark, simulate=True)  # noqa: F821 (the notebook's SparkSession)
print(f"run_id = {run_id}; tables under {config.tables.root}")

# COMMAND ----------

# MAGIC %md
# MAGIC The metrics of this run, one row per model and metric (NDCG@k on held-out queries, and the
# MAGIC bias-curve error of each two-tower model). Open `bias_diagnostics` with this run id to see
# MAGIC the curves, and `scoring` to score other pairs with its models.

# COMMAND ----------

display(run_metrics(spark, config, run_id))  # noqa: F821
