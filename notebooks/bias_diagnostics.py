# Databricks notebook source
# MAGIC %md
# MAGIC # Position-bias diagnostics
# MAGIC For one trained run, per context: the examination curve each model learned, the naive
# MAGIC click-through rate by slot of the impression log, and (for simulated logs) the true curve,
# MAGIC all relative to slot 1. The naive CTR falls faster than the truth because the logging ranker
# MAGIC puts relevant items on top; a good bias tower lands on the truth. All logic lives in
# MAGIC `ulr_spark.diagnostics`.
# MAGIC
# MAGIC Widgets: `config`, `tables_root`, `overrides` (as in the quickstart), `run_id` (empty = the
# MAGIC newest trained run), `plot_path` (where the PNG is saved).

# COMMAND ----------

# MAGIC %md
# MAGIC The library, notebook-scoped (skip this cell when the wheel is installed on the cluster):

# COMMAND ----------

# MAGIC %pip install /dbfs/path/to/ulr_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

from ulr_spark import diagnostics, notebook

notebook.add_widgets(
    dbutils,  # noqa: F821
    [("run_id", "", "Run id (empty = newest)"), ("plot_path", "/dbfs/tmp/ulr-spark-quickstart/bias_curves.png", "PNG path")],
)

# COMMAND ----------

config = notebook.config_from_widgets(dbutils)  # noqa: F821
run_id = notebook.run_or_latest(config, dbutils.widgets.get("run_id"))  # noqa: F821
print(f"run_id = {run_id}")

# COMMAND ----------

# MAGIC %md
# MAGIC The naive click-through rate by context and slot, aggregated in Spark from the impression log:

# COMMAND ----------

ctr = diagnostics.naive_click_through(spark, config)  # noqa: F821
display(ctr)  # noqa: F821

# COMMAND ----------

# MAGIC %md
# MAGIC Every curve side by side, one row per context and slot (`truth` only for simulated logs):

# COMMAND ----------

ctr_pdf = ctr.toPandas()
learned_pdf = diagnostics.learned_curves(spark, config, run_id)  # noqa: F821
truth_pdf = diagnostics.true_curves(spark, config)  # noqa: F821
curves = diagnostics.curves_by_position(diagnostics.examination_curves(ctr_pdf, learned_pdf, truth_pdf))
display(curves)  # noqa: F821

# COMMAND ----------

plot_path = dbutils.widgets.get("plot_path")  # noqa: F821
figure = diagnostics.plot_examination_diagnostics(ctr_pdf, learned_pdf, truth_pdf, plot_path)
print(f"saved {plot_path}")
display(figure)  # noqa: F821
