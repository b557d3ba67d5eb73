"""Helpers of the Databricks notebooks (``notebooks/``): widgets to a config, and the tables
of one run. The analytics they show are in :mod:`ulr_spark.diagnostics`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Optional

from pyspark.sql import DataFrame, SparkSession

from ulr_spark import schema
from ulr_spark.config import Config, load_config
from ulr_spark.io.artifacts import latest_run_id
from ulr_spark.io.delta import run_rows

# ---------------------------------------------------------------------------------------------
# Notebook parameters
# ---------------------------------------------------------------------------------------------


def parse_overrides(text: Optional[str]) -> list[str]:
    """``key=value`` overrides from one widget: separated by commas or newlines.

    A widget is a single text box, so several overrides share it. Commas inside brackets,
    braces or quotes belong to the value (``train.models=[naive, additive]``), so the text is
    split only at commas outside them. Blank items are dropped; an item without ``=`` is an
    error here rather than a confusing one from the config loader.
    """
    items: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in text or "":
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth = max(0, depth - 1)
        elif char == "\n" or (char == "," and depth == 0):
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    overrides = [item.strip() for item in items if item.strip()]
    broken = [item for item in overrides if "=" not in item]
    if broken:
        raise ValueError(f"overrides must look like section.key=value, separated by commas or newlines; got {broken}")
    return overrides


def path_override(key: str, path: str) -> str:
    """``key=<path>`` with the path quoted, so YAML reads it as a string whatever it looks
    like (a path such as ``/x/2026`` or one with ``: `` in it must not turn into a number or a
    mapping)."""
    return f"{key}={json.dumps(path)}"


def find_config(path: str) -> str:
    """The config file ``path`` names; a relative path is looked up in the working directory,
    then in its parents.

    A notebook in a Databricks Git folder runs in the notebook's own folder (``notebooks/``),
    while the configs live in ``conf/`` at the repository root, so the same default
    (``conf/demo.yaml``) works there, locally and in the test.
    """
    if os.path.isabs(path) or os.path.exists(path):
        return path
    here = os.path.abspath(os.getcwd())
    while True:
        candidate = os.path.join(here, path)
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            raise FileNotFoundError(f"config {path!r} not found in {os.getcwd()} or any folder above it")
        here = parent


# The widgets every notebook shares: (name, default, label).
CONFIG_WIDGETS = (
    ("config", "conf/demo.yaml", "Config file"),
    ("tables_root", "/dbfs/tmp/ulr-spark-quickstart", "Tables root"),
    ("overrides", "", "Overrides (key=value, comma or newline separated)"),
)


def add_widgets(dbutils: Any, extra: tuple[tuple[str, str, str], ...] = ()) -> None:
    """The shared widgets, then the notebook's own ``(name, default, label)`` ones."""
    for name, default, label in CONFIG_WIDGETS + tuple(extra):
        dbutils.widgets.text(name, default, label)


def config_from_widgets(dbutils: Any, extra_overrides: Sequence[str] = ()) -> Config:
    """The config the shared widgets describe: the file, then the ``overrides`` widget, then
    ``tables_root``, then the notebook's own overrides."""
    get = dbutils.widgets.get
    overrides = parse_overrides(get("overrides")) + [path_override("tables.root", get("tables_root"))]
    return load_config(find_config(get("config")), overrides + list(extra_overrides))


def run_or_latest(config: Config, run_id: Optional[str]) -> str:
    """The run a notebook looks at: the one named, or the newest trained run."""
    return run_id.strip() if run_id and run_id.strip() else latest_run_id(config.tables.path("models"))


# ---------------------------------------------------------------------------------------------
# Tables of a run
# ---------------------------------------------------------------------------------------------


def run_metrics(spark: SparkSession, config: Config, run_id: str) -> DataFrame:
    """The run's metrics, one row per model and metric, in a stable order for display."""
    return run_rows(spark, config.tables.path("metrics"), run_id).orderBy(schema.MODEL, schema.METRIC)


def run_scores(spark: SparkSession, config: Config, run_id: str) -> DataFrame:
    """The run's scores in ``tables.scores`` (all of them: callers limit what they show)."""
    return run_rows(spark, config.tables.path("scores"), run_id)
