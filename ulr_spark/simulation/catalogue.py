"""The simulated catalogue: queries, their candidate items, features and true labels, drawn on
the driver with numpy from a hidden function of synthetic features or from a LETOR file, and
the true examination curve (docs/design.md, "Simulator").

Besides the label, each (query, item) carries the true relevance score the labels are cut from,
the distractor score u(x) the logging ranker rewards although it is not relevance, and a
``salient`` flag (a badge or a thumbnail: what the ``context`` scenario's neighbours react to
under ``neighbour_signal: salience``). An item is salient when its score along a random feature
direction w_s, orthogonal to the linear relevance direction, is in the top ``salient_share`` of
the whole catalogue: salience is visible in the features but is not relevance.

``hidden_relevance`` adds relevance that no feature shows: with h ~ N(0, 1) per (query, item),

    relevance = standardise(f(x) + hidden_relevance * h)

before the labels are cut, so h moves the labels and the logging ranker's relevance term (a
ranker that knows more than the features, as production rankers with their own signals do)
but never the features. Both new draws come after every older draw of the seeded generator, so
the catalogue of a config that leaves them at their defaults is the one it always was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ulr_spark import schema
from ulr_spark.simulation.letor import read_letor
from ulr_spark.simulation.settings import SimulateConfig


@dataclass(frozen=True)
class SimulatedTruth:
    """What the simulator knows and the models must recover."""

    catalogue: pd.DataFrame  # query_id, item_id, features, label, split, relevance, distractor, salient
    examination: np.ndarray  # true examination of slots 1..slate_size


def attraction(labels: np.ndarray, eps: float) -> np.ndarray:
    """P(attracted | y) = eps + (1 - eps) * (2^y - 1) / (2^4 - 1)."""
    return eps + (1.0 - eps) * (np.power(2.0, labels) - 1.0) / 15.0


def examination_curve(cfg: SimulateConfig) -> np.ndarray:
    """theta_k ** eta for slots 1..slate_size."""
    return np.power(np.asarray(cfg.examination[: cfg.slate_size], dtype=np.float64), cfg.eta)


def _labels_from_relevance(relevance: np.ndarray, shares: list[float]) -> np.ndarray:
    cut_points = np.quantile(relevance, np.cumsum(shares)[:-1])
    return np.searchsorted(cut_points, relevance, side="right").astype(np.int32)


def _standardise(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / max(float(values.std()), 1e-12)


# Per-item flag of the catalogue (0/1): the item stands out on the page whatever its relevance.
SALIENT = "salient"


def _top_share(score: np.ndarray, share: float) -> np.ndarray:
    """1 for the round(share * n) highest scores (ties broken by position), else 0."""
    flags = np.zeros(len(score), dtype=np.int32)
    flags[np.argsort(-score, kind="stable")[: int(round(share * len(score)))]] = 1
    return flags


def _orthogonal(w: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """w without its component along ``direction`` (w itself when direction is 0)."""
    norm = float(direction @ direction)
    return w - (w @ direction) / norm * direction if norm > 0 else w


def _catalogue_frame(
    query_index: np.ndarray, features: np.ndarray, labels: np.ndarray, heldout_queries: np.ndarray,
    relevance: np.ndarray, distractor: np.ndarray, salient: np.ndarray, prefix: str = "q",
) -> pd.DataFrame:
    """One row per (query, candidate item); ``query_index`` is contiguous per query."""
    within = np.zeros(len(query_index), dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(query_index)) + 1]
    for begin, end in zip(starts, np.r_[starts[1:], len(query_index)]):
        within[begin:end] = np.arange(end - begin)
    query_ids = np.array([f"{prefix}{i:07d}" for i in query_index])
    return pd.DataFrame(
        {
            schema.QUERY_ID: query_ids,
            schema.ITEM_ID: [f"{q}-i{j:03d}" for q, j in zip(query_ids, within)],
            "query_index": query_index,
            schema.FEATURES: list(features.astype(np.float32)),
            schema.LABEL: labels.astype(np.int32),
            schema.SPLIT: np.where(heldout_queries[query_index], schema.SPLIT_HELDOUT, schema.SPLIT_TRAIN),
            schema.TRUE_RELEVANCE: relevance.astype(np.float64),
            schema.DISTRACTOR: distractor.astype(np.float64),
            SALIENT: salient.astype(np.int32),
        }
    )


def _heldout(rng: np.random.Generator, num_queries: int, fraction: float) -> np.ndarray:
    order = rng.permutation(num_queries)
    heldout = np.zeros(num_queries, dtype=bool)
    heldout[order[: max(1, int(round(num_queries * fraction)))]] = True
    return heldout


def draw_synthetic_catalogue(cfg: SimulateConfig) -> pd.DataFrame:
    """Queries, candidates, features and labels from a hidden function; deterministic for a seed."""
    rng = np.random.default_rng(cfg.seed)
    q, c, d = cfg.num_queries, cfg.candidates_per_query, cfg.num_features
    x = rng.normal(size=(q, c, d)).astype(np.float32)

    # Hidden relevance: a linear part, an interaction, and a query offset the model cannot see
    # (it moves whole queries up or down, which per-query NDCG ignores).
    w_lin, w_a, w_b = (rng.normal(size=d) / np.sqrt(d) for _ in range(3))
    relevance = x @ w_lin + 0.7 * np.tanh(x @ w_a) * (x @ w_b) + rng.normal(scale=0.3, size=(q, 1))
    relevance = _standardise(relevance)

    # The distractor direction is made orthogonal to the linear part of relevance.
    w_u = rng.normal(size=d)
    w_u -= w_u @ w_lin / (w_lin @ w_lin) * w_lin
    distractor = _standardise(x @ w_u)
    heldout = _heldout(rng, q, cfg.heldout_fraction)

    # Drawn after every older draw, so that they change no catalogue drawn before they existed.
    # Salience is orthogonal to the linear part of relevance, as the distractor is.
    w_s = _orthogonal(rng.normal(size=d), w_lin)
    salient = _top_share((x @ w_s).reshape(-1), cfg.salient_share)
    hidden = rng.normal(size=(q, c))
    if cfg.hidden_relevance > 0:  # at 0, the relevance is left bit for bit as it was
        relevance = _standardise(relevance + cfg.hidden_relevance * hidden)

    labels = _labels_from_relevance(relevance, cfg.label_shares)
    return _catalogue_frame(
        np.repeat(np.arange(q), c), x.reshape(q * c, d), labels.reshape(-1), heldout,
        relevance.reshape(-1), distractor.reshape(-1), salient,
    )


# A ranker that knows the labels only roughly: its item-level error persists across requests.
LETOR_RANKER_ERROR = 0.5


def draw_letor_catalogue(cfg: SimulateConfig) -> pd.DataFrame:
    """Truth and features from LETOR files (docs/design.md, "Simulator"): labels as given; the logging
    ranker sees the label with a fixed per-item error, plus a random feature direction as the
    distractor. Salience is a random feature direction too, orthogonal to the least-squares
    direction of the labels (the linear relevance direction of the file)."""
    rng = np.random.default_rng(cfg.seed)
    parts = [(read_letor(cfg.letor.train_path), False)]
    if cfg.letor.test_path:
        parts.append((read_letor(cfg.letor.test_path), True))
    width = max(data.features.shape[1] for data, _ in parts)  # a feature may be absent from one file
    query_index, features, labels, heldout_flags = [], [], [], []
    offset = 0
    for data, is_test in parts:
        _, dense = np.unique(data.query_ids, return_inverse=True)
        # Keep file order of queries: rank queries by first appearance.
        first_seen: dict[int, int] = {}
        order = np.array([first_seen.setdefault(q, len(first_seen)) for q in dense])
        query_index.append(order + offset)
        heldout_flags += [is_test] * len(first_seen)
        offset += len(first_seen)
        features.append(np.pad(data.features, ((0, 0), (0, width - data.features.shape[1]))))
        labels.append(data.labels)
    query_index = np.concatenate(query_index)
    heldout = np.asarray(heldout_flags) if cfg.letor.test_path else _heldout(rng, offset, cfg.heldout_fraction)
    x = np.concatenate(features)
    y = np.concatenate(labels)
    relevance = _standardise(y + LETOR_RANKER_ERROR * rng.normal(size=len(y)))
    distractor = _standardise(x @ rng.normal(size=x.shape[1]))
    # Least squares of the labels on the centred features, by the normal equations: no centred
    # copy of a large file's features is made.
    mean = x.mean(axis=0, dtype=np.float64)
    gram = (x.T @ x).astype(np.float64) - len(x) * np.outer(mean, mean)
    w_lin = np.linalg.lstsq(gram, x.T @ (y - y.mean()).astype(x.dtype), rcond=None)[0]
    w_s = _orthogonal(rng.normal(size=x.shape[1]), w_lin)
    salient = _top_share(x @ w_s.astype(x.dtype), cfg.salient_share)
    sort = np.argsort(query_index, kind="stable")
    return _catalogue_frame(
        query_index[sort], x[sort], y[sort], heldout, relevance[sort], distractor[sort], salient[sort]
    )


def draw_catalogue(cfg: SimulateConfig) -> SimulatedTruth:
    """The catalogue of the configured source and the examination curve of the PBM part."""
    catalogue = draw_letor_catalogue(cfg) if cfg.source == "letor" else draw_synthetic_catalogue(cfg)
    return SimulatedTruth(catalogue=catalogue, examination=examination_curve(cfg))
