# Databricks notebook source
# MAGIC %md
# MAGIC # Score (query, item) pairs with a trained run
# MAGIC Applies the relevance tower of every model of a run to a table of pairs and writes the
# MAGIC debiased scores to a Delta table (one transaction that replaces what an earlier scoring of
# MAGIC the same pairs table under the run wrote, so a rerun never duplicates them). All logic
# MAGIC lives in `ulr_spark.scoring`.
# MAGIC
# MAGIC Widgets: `config`, `tables_root`, `overrides` (as in the quickstart), `run_id` (empty = the
# MAGIC newest trained run), `pairs_table` (a Delta path with `query_id`, `item_id`, `features`
# MAGIC array<float>; empty = the config's `score.source`), `scores_table` (the output Delta path;
# MAGIC empty = the config's `tables.scores`).

# COMMAND ----------

# MAGIC %md
# MAGIC The library, notebook-scoped (skip this cell when the wheel is installed on the cluster):

# COMMAND ----------

# MAGIC %pip install /dbfs/path/to/ulr_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

from ulr_spark import notebook
from ulr_spark.io.delta import read_table
from ulr_spark.scoring import score

notebook.add_widgets(
    dbutils,  # noqa: F821
    [
        ("run_id", "", "Run id (empty = newest)"),
        ("pairs_table", "", "Pairs Delta path (empty = score.source)"),
        ("scores_table", "", "Scores Delta path (empty = tables.scores)"),
    ],
)

# COMMAND ----------

scores_table = dbutils.widgets.get("scores_table").strip()  # noqa: F821
config = notebook.config_from_widgets(dbutils, [notebook.path_override("tables.scores", scores_table)] if scores_table else [])  # noqa: F821
run_id = notebook.run_or_latest(config, dbutils.widgets.get("run_id"))  # noqa: F821
pairs_table = dbutils.widgets.get("pairs_table").strip()  # noqa: F821
pairs = read_table(spark, pairs_table) if pairs_table else None  # noqa: F821
print(f"run_id = {run_id}; pairs from {pairs_table or 'score.source=' + config.score.source}")

# COMMAND ----------

summary = score(config, spark, run_id, pairs=pairs, pairs_source=pairs_table or None)  # noqa: F821
print(f"run {run_id}: {summary}; written to {config.tables.path('scores')}")

# COMMAND ----------

# MAGIC %md
# MAGIC A sample of the run's scores (`score` is the relevance logit of each model):

# COMMAND ----------

display(notebook.run_scores(spark, config, run_id).limit(20))  # noqa: F821
