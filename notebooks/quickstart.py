# Databricks notebook source
# MAGIC %md
# MAGIC # ulr-spark quickstart
# MAGIC Simulates a click log with a known truth, builds examples, trains the naive and the additive
# MAGIC two-tower models, scores every (query, item) pair and prints the metrics. All logic lives in
# MAGIC the `ulr_spark` library; this notebook only calls it.

# COMMAND ----------

# MAGIC %pip install /dbfs/path/to/ulr_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

from ulr_spark.config import load_config
from ulr_spark.pipeline import run_all

config = load_config("conf/demo.yaml", ["tables.root=/dbfs/tmp/ulr-spark-quickstart"])
run_id = run_all(config, spark)  # noqa: F821 (the notebook's SparkSession)

# COMMAND ----------

# MAGIC %md
# MAGIC The metrics of this run, one row per model and metric:

# COMMAND ----------

display(spark.read.format("delta").load(config.tables.path("metrics")).where(f"run_id = '{run_id}'"))  # noqa: F821
