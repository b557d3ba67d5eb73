"""Small sample logs in the three shapes teams bring (docs/own_logs.md): what a newcomer runs
ulr-spark on before their own log, and what the tests check recovered quality on.

Each generator draws, with numpy, a log of the given shape from a known click model, with its
own column names, and returns it with the truth that a real log never has: the examination
curve and the true relevance of each (query, item) pair.

- ``search``: ids only (session, query, url, rank, click, day); clicks from a position-based
  model, P(click) = alpha_qd theta_r, with alpha_qd ~ Beta(0.5, 2.5) and a logging ranker that
  sorts by logit(alpha) plus noise, so pairs are shown at several ranks.
- ``marketplace``: eight numeric columns on scales from 0.01 to 10,000 (some with nulls and
  NaN), three categorical columns, and the device as page context; relevance is a function of
  the features (not of the photos, which the logging ranker rewards), examination is steeper on mobile.
- ``grid``: a 4 x 3 grid logged as row and column, an array of item embeddings and a brand.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np
import pandas as pd

SHAPES = ("search", "marketplace", "grid")
# sample-log writes this empty file into the folder of each log it writes, and replaces only a
# folder that holds it: a user's own log is never deleted.
SAMPLE_MARKER = "_ULR_SPARK_SAMPLE_LOG"
FIRST_DAY = datetime.date(2026, 1, 1)


@dataclass(frozen=True)
class SampleLog:
    log: pd.DataFrame
    # Examination of each (context, slot), slot 1 of the first context = 1: {context: [theta_1, ...]}.
    examination: dict[str, list[float]]
    # True relevance of each (query, item): columns query_id, item_id (as strings), label (0..4), attractiveness.
    truth: pd.DataFrame


def _attraction(labels: np.ndarray) -> np.ndarray:
    return 0.05 + 0.95 * (np.power(2.0, labels) - 1.0) / 15.0


def _grades(relevance: np.ndarray) -> np.ndarray:
    cuts = np.quantile(relevance, [0.45, 0.7, 0.85, 0.95])
    return np.searchsorted(cuts, relevance, side="right").astype(np.int32)


def _sessions(rng, queries: int, sessions: int, exponent: float) -> np.ndarray:
    popularity = 1.0 / np.arange(1, queries + 1) ** exponent
    return rng.choice(queries, size=sessions, p=popularity / popularity.sum())


def _show(rng, scores: np.ndarray, noise: float, shown: int) -> np.ndarray:
    """Indices of the top ``shown`` of one session's candidates under a noisy logging score."""
    return np.argsort(-(scores + rng.normal(0, noise, scores.shape[0])))[:shown]


def search_log(sessions: int = 20_000, queries: int = 400, docs: int = 20, shown: int = 10, days: int = 10,
               seed: int = 0, logging_noise: float = 1.0) -> SampleLog:
    rng = np.random.default_rng(seed)
    theta = 1.0 / np.arange(1, shown + 1) ** 0.8
    alpha = rng.beta(0.5, 2.5, size=(queries, docs))
    logit = np.log(alpha / (1 - alpha))
    query_of = _sessions(rng, queries, sessions, 1.0)
    rows = []
    for s, q in enumerate(query_of):
        order = _show(rng, logit[q], logging_noise, shown)
        clicks = rng.random(shown) < alpha[q, order] * theta
        day = FIRST_DAY + datetime.timedelta(days=int(s * days // sessions))
        for r, (d, c) in enumerate(zip(order, clicks)):
            rows.append((f"s{s}", int(q), f"q{q}-d{d}", r + 1, int(c), day))
    log = pd.DataFrame(rows, columns=["session_id", "query", "url", "rank", "click", "day"])
    truth = pd.DataFrame(
        [(str(q), f"q{q}-d{d}", alpha[q, d]) for q in range(queries) for d in range(docs)],
        columns=["query_id", "item_id", "attractiveness"],
    )
    truth["label"] = _grades(truth["attractiveness"].to_numpy())
    return SampleLog(log, {"default": list(theta)}, truth)


def marketplace_log(sessions: int = 20_000, queries: int = 200, listings: int = 30, shown: int = 10, days: int = 10,
                    seed: int = 0) -> SampleLog:
    rng = np.random.default_rng(seed)
    n = queries * listings
    price = np.exp(rng.normal(4.0, 1.2, n)).clip(1, 5000)  # currency units, 1 .. 5000
    rating = rng.uniform(1, 5, n)
    reviews = np.floor(np.exp(rng.normal(4, 2, n))).clip(0, 50_000)
    shipping_days = rng.integers(1, 15, n).astype(float)
    discount = rng.uniform(0, 0.5, n)  # 0 .. 0.5
    seller_score = rng.normal(0.01, 0.005, n)  # a tiny scale: ~0.01
    photos = rng.integers(0, 20, n).astype(float)
    age_days = rng.uniform(0, 3000, n)
    site = rng.choice(["main", "outlet", "pro", "kids", "eco"], n)
    country = rng.choice([f"c{i:02d}" for i in range(20)], n)
    category = rng.choice([f"cat{i:02d}" for i in range(40)], n)
    category_effect = dict(zip([f"cat{i:02d}" for i in range(40)], rng.normal(0, 0.5, 40)))
    z = lambda v: (v - v.mean()) / v.std()  # noqa: E731
    relevance = (
        1.2 * z(rating) - 0.9 * z(np.log(price)) + 0.7 * z(np.log1p(reviews)) - 0.4 * z(shipping_days)
        + 0.5 * z(discount) + 0.6 * z(seller_score) + np.vectorize(category_effect.get)(category)
        + (site == "pro") * 0.5
    )
    labels = _grades(relevance)
    attract = _attraction(labels)
    shipping_days[rng.random(n) < 0.1] = np.nan  # unknown shipping: imputed, with its indicator
    discount_logged = discount.copy()
    discount_logged[rng.random(n) < 0.05] = np.nan
    theta = {"device=desktop": 1.0 / np.arange(1, shown + 1) ** 0.6, "device=mobile": 0.9 / np.arange(1, shown + 1) ** 1.1}
    query_of = _sessions(rng, queries, sessions, 0.8)
    # The logging ranker knows some of the relevance, and rewards the number of photos, which
    # relevance ignores (a distractor): a naive model learns it from the position.
    logging = 0.6 * relevance + 1.0 * z(photos)
    rows = []
    for s, q in enumerate(query_of):
        items = q * listings + _show(rng, logging[q * listings:(q + 1) * listings], 1.0, shown)
        device = "mobile" if rng.random() < 0.6 else "desktop"
        clicks = rng.random(shown) < attract[items] * theta[f"device={device}"]
        day = FIRST_DAY + datetime.timedelta(days=int(s * days // sessions))
        for r, (i, c) in enumerate(zip(items, clicks)):
            rows.append((
                1_000_000 + s, f"term{q}", int(i), r + 1, bool(c), day, device, float(price[i]), float(rating[i]),
                int(reviews[i]), shipping_days[i], discount_logged[i], float(seller_score[i]), float(photos[i]),
                float(age_days[i]), site[i], country[i], category[i],
            ))
    log = pd.DataFrame(rows, columns=[
        "page_view", "search_term", "listing_id", "slot", "is_click", "dt", "device", "price", "rating", "reviews",
        "shipping_days", "discount", "seller_score", "photos", "age_days", "site", "country", "category",
    ])
    truth = pd.DataFrame({
        "query_id": [f"term{i // listings}" for i in range(n)], "item_id": [str(i) for i in range(n)],
        "attractiveness": attract, "label": labels,
    })
    return SampleLog(log, {k: list(v) for k, v in theta.items()}, truth)


def grid_log(sessions: int = 20_000, queries: int = 200, products: int = 30, rows: int = 4, cols: int = 3,
             dims: int = 8, days: int = 10, seed: int = 0) -> SampleLog:
    rng = np.random.default_rng(seed)
    shown = rows * cols
    n = queries * products
    embedding = rng.normal(0, 1, (n, dims))
    weights = rng.normal(0, 1, dims)
    brand = rng.choice([f"b{i}" for i in range(30)], n)
    brand_effect = dict(zip([f"b{i}" for i in range(30)], rng.normal(0, 0.5, 30)))
    relevance = embedding @ weights / np.sqrt(dims) + np.vectorize(brand_effect.get)(brand)
    labels = _grades(relevance)
    attract = _attraction(labels)
    row_decay = 1.0 / np.arange(1, rows + 1) ** 0.9
    col_effect = np.array([1.0, 0.85, 0.7])[:cols]
    theta = (row_decay[:, None] * col_effect[None, :]).ravel()  # row-major reading order
    query_of = _sessions(rng, queries, sessions, 0.9)
    out = []
    for s, q in enumerate(query_of):
        items = q * products + _show(rng, relevance[q * products:(q + 1) * products], 1.0, shown)
        clicks = rng.random(shown) < attract[items] * theta
        day = FIRST_DAY + datetime.timedelta(days=int(s * days // sessions))
        for slot, (i, c) in enumerate(zip(items, clicks)):
            out.append((f"r{s}", f"u{q}", f"p{i}", slot // cols + 1, slot % cols + 1, int(c), day,
                        embedding[i].astype(np.float32).tolist(), brand[i]))
    log = pd.DataFrame(out, columns=["request", "user_query", "product", "row", "col", "clicked", "date", "embedding", "brand"])
    truth = pd.DataFrame({
        "query_id": [f"u{i // products}" for i in range(n)], "item_id": [f"p{i}" for i in range(n)],
        "attractiveness": attract, "label": labels,
    })
    return SampleLog(log, {"default": list(theta)}, truth)


GENERATORS = {"search": search_log, "marketplace": marketplace_log, "grid": grid_log}


def write_sample_log(shape: str, log_path: str, sessions: int, seed: int = 0) -> SampleLog:
    """Draw a sample log of ``shape`` and write it as Parquet files under ``log_path``
    (replacing what is there: a sample log is ulr-spark's own, never a user's)."""
    import os
    import shutil

    sample: SampleLog = GENERATORS[shape](sessions=sessions, seed=seed)  # type: ignore[operator]
    if os.path.exists(log_path):
        if not os.path.exists(os.path.join(log_path, SAMPLE_MARKER)):
            raise ValueError(
                f"sample-log: {log_path} exists and was not written by sample-log (no {SAMPLE_MARKER} file in it); "
                "it is never overwritten: point tables.impressions (or tables.root) elsewhere"
            )
        shutil.rmtree(log_path)
    os.makedirs(log_path)
    open(os.path.join(log_path, SAMPLE_MARKER), "w").close()  # Spark skips files whose name starts with "_"
    chunk = max(1, len(sample.log) // 4)
    for i, start in enumerate(range(0, len(sample.log), chunk)):
        sample.log.iloc[start:start + chunk].to_parquet(os.path.join(log_path, f"part-{i:05d}.parquet"), index=False)
    return sample


def write_sample(config, spark, shape: str, sessions: int, seed: int = 0) -> dict[str, int]:
    """The ``sample-log`` command: the log as Parquet at ``tables.impressions``, and the truth a
    real log lacks as Delta tables at ``tables.truth_labels`` and ``tables.truth_examination``,
    so ``evaluate`` adds NDCG and the bias-curve error to the held-out click metrics."""
    from pyspark.sql import functions as F

    from ulr_spark import schema
    from ulr_spark.io.delta import Provenance, overwrite_table

    if config.source.format != "parquet":
        raise ValueError(f"sample-log writes Parquet files: set source.format: parquet (it is {config.source.format!r})")
    sample = write_sample_log(shape, config.tables.path("impressions"), sessions, seed)
    provenance = Provenance.of(config, f"sample-{shape}", "sample-log")
    labels = spark.createDataFrame(sample.truth[["query_id", "item_id", "label"]]).withColumn(schema.SPLIT, F.lit(schema.SPLIT_TRAIN))
    overwrite_table(labels.coalesce(1), config.tables.path("truth_labels"), "truth_labels", provenance)
    reference = next(iter(sample.examination.values()))[0]
    curves = pd.DataFrame(
        [(context if context != "default" else schema.DEFAULT_CONTEXT_KEY, k + 1, theta / reference, theta)
         for context, values in sample.examination.items() for k, theta in enumerate(values)],
        columns=[schema.CONTEXT_KEY, schema.POSITION, schema.EXAMINATION, schema.EXAMINATION_ABSOLUTE],
    )
    overwrite_table(spark.createDataFrame(curves).coalesce(1), config.tables.path("truth_examination"), "truth_examination", provenance)
    return {"log_rows": len(sample.log), "sessions": int(sample.log.iloc[:, 0].nunique()), "pairs": len(sample.truth)}
