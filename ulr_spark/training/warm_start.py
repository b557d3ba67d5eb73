"""The driver side of continuing earlier work: the warm start (``train.init_from``: which earlier
model each configured model starts from, checked before any process starts), ``train --resume``
(the examples version the run started on), and the window of recent dates trained on
(docs/operations.md)."""

from __future__ import annotations

from typing import Optional

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ulr_spark import schema
from ulr_spark.config import Config
from ulr_spark.features.encoding import FeatureEncoder
from ulr_spark.io.artifacts import latest_run_id, run_artifacts, weights_bytes
from ulr_spark.models.spec import ModelSpec
from ulr_spark.training import checkpoints

# Spec keys a warm start may change: the name is the config's, and contexts first seen since the
# earlier run add rows to the bias tables (they start as initialised).
_MAY_DIFFER = {"name", "num_contexts"}


def resolve_init_run(models_root: str, init_from: Optional[str], run_id: str) -> Optional[str]:
    """The run to start from: ``init_from`` itself, or for ``latest`` the run that finished last
    (None, with a note, when there is none yet: the first day trains from scratch).

    Raises:
        FileNotFoundError: a named run that does not exist or did not finish.
    """
    if init_from is None:
        return None
    if init_from != "latest":
        return init_from
    try:
        return latest_run_id(models_root)
    except FileNotFoundError:
        print(f"train: train.init_from=latest but no finished run under {models_root}: run {run_id} trains from scratch")
        return None


def warm_start_states(
    models_root: str, init_run: str, specs: list[ModelSpec], encoder: Optional[FeatureEncoder], contexts: dict[int, str]
) -> dict[str, bytes]:
    """The saved weights each spec starts from (by model name); a model the earlier run lacks is
    not in the result and trains from scratch (a note says so).

    Raises:
        FileNotFoundError: the run does not exist or did not finish.
        ValueError: a model whose spec, feature transform or context ids (``contexts``, id to
            context key) differ from the earlier one's (names what differs); train without
            train.init_from instead.
    """
    earlier = {a.spec.name: a for a in run_artifacts(models_root, init_run)}
    states: dict[str, bytes] = {}
    for spec in specs:
        artifact = earlier.get(spec.name)
        if artifact is None:
            print(f"train: train.init_from={init_run} has no model {spec.name!r}: it trains from scratch")
            continue
        old, new = artifact.spec.to_dict(), spec.to_dict()
        differ = sorted(k for k in set(old) | set(new) if k not in _MAY_DIFFER and old.get(k) != new.get(k))
        if new["num_contexts"] < old["num_contexts"]:
            differ.append("num_contexts (fewer contexts than the earlier run)")
        if differ:
            raise ValueError(
                f"train: train.init_from={init_run}: model {spec.name!r} differs from the earlier run's in {differ}; "
                "a warm start needs the same model; train without train.init_from"
            )
        saved = artifact.card.get("feature_encoder")
        current = FeatureEncoder.from_dict(saved) if saved else None
        if current != encoder:
            raise ValueError(
                f"train: train.init_from={init_run}: the feature transform of the examples differs from the one model "
                f"{spec.name!r} was trained with (a full rebuild of the examples refits it); train without train.init_from"
            )
        moved = sorted(i for i, key in artifact.contexts.items() if i in contexts and contexts[i] != key)
        if moved:
            raise ValueError(
                f"train: train.init_from={init_run}: context id(s) {moved} name other contexts than when model {spec.name!r} "
                "was trained (the examples were rebuilt); train without train.init_from"
            )
        states[spec.name] = weights_bytes(artifact)
    return states


def resumed_version(checkpoint_run: str, config: Config, run_id: str) -> tuple[int, Optional[str]]:
    """The examples version a run to resume started on, and the run it warm-started from.

    Raises:
        FileNotFoundError: the run has no checkpoints (it finished, or never started).
        ValueError: the config differs from the one the run started with.
    """
    plan = checkpoints.read_plan(checkpoint_run)
    if plan is None:
        raise FileNotFoundError(
            f"train --resume: run {run_id} has no checkpoints under {checkpoint_run} (it finished, or never started); "
            "train it without --resume"
        )
    if plan["config_fingerprint"] != config.fingerprint():
        raise ValueError(f"train --resume: the config differs from the one run {run_id} started with; resume it with that config")
    return int(plan["examples_version"]), plan.get("init_from")


def windowed(examples: DataFrame, window_days: int) -> DataFrame:
    """The examples of the last ``window_days`` event dates (all when 0).

    Raises:
        ValueError: a window on examples that carry no date (not built incrementally).
    """
    if not window_days:
        return examples
    if schema.EVENT_DATE not in examples.columns:
        raise ValueError("train.window_days needs examples built with examples.incremental (they carry their event_date)")
    last = examples.agg(F.max(schema.EVENT_DATE)).first()[0]
    return examples.where(F.col(schema.EVENT_DATE) > F.date_sub(F.lit(last), window_days))
