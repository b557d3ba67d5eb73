"""The synthetic PBM log of the click-model library benchmark (bench/click_library.py), in
both formats: ulr-spark's impression log (one row per shown result, the id-only columns of
``conf/own_search_log.yaml``) and the library's own session-per-row Parquet.

1,000 queries x 20 documents; each session picks a query uniformly and shows 10 of its 20
documents in a random order, so every document is shown at every rank (which a PBM needs to
tell examination from attractiveness). Clicks follow a PBM: P(click) = theta[rank] x
alpha[query, doc], theta[r] = 1 / r^0.7 (rank 1 examined always), alpha ~ Beta(1, 3).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

QUERIES = 20 * 50  # 1,000
DOCS_PER_QUERY = 20
SHOWN = 10
EXAMINATION_POWER = 0.7
DAYS = 7
FIRST_DAY = datetime.date(2026, 1, 1)


def true_examination(shown: int = SHOWN) -> np.ndarray:
    return 1.0 / np.arange(1, shown + 1, dtype=np.float64) ** EXAMINATION_POWER


@dataclass(frozen=True)
class ClickLog:
    query: np.ndarray  # [sessions] query of each session, 0..QUERIES-1
    doc: np.ndarray  # [sessions, SHOWN] document shown at each rank, 0..DOCS_PER_QUERY-1 (within the query)
    clicks: np.ndarray  # [sessions, SHOWN] bool
    attractiveness: np.ndarray  # [QUERIES, DOCS_PER_QUERY]
    examination: np.ndarray  # [SHOWN]

    @property
    def sessions(self) -> int:
        return int(self.query.shape[0])

    def pair_ids(self) -> np.ndarray:
        """[sessions, SHOWN] the (query, document) pair, 1-based (0 is the library's padding)."""
        return (self.query[:, None] * DOCS_PER_QUERY + self.doc + 1).astype(np.int32)


def generate(sessions: int, seed: int = 16) -> ClickLog:
    rng = np.random.default_rng(seed)
    alpha = rng.beta(1.0, 3.0, size=(QUERIES, DOCS_PER_QUERY))
    theta = true_examination()
    query = rng.integers(0, QUERIES, size=sessions, dtype=np.int64)
    doc = np.empty((sessions, SHOWN), dtype=np.int64)
    clicks = np.empty((sessions, SHOWN), dtype=bool)
    chunk = 200_000  # bounded memory: the [chunk, 20] sort keys
    for start in range(0, sessions, chunk):
        stop = min(sessions, start + chunk)
        shown = np.argsort(rng.random((stop - start, DOCS_PER_QUERY)), axis=1)[:, :SHOWN]
        doc[start:stop] = shown
        p = alpha[query[start:stop, None], shown] * theta[None, :]
        clicks[start:stop] = rng.random(p.shape) < p
    return ClickLog(query, doc, clicks, alpha, theta)


def _parts(total: int, files: int) -> list[tuple[int, int]]:
    step = -(-total // files)
    return [(s, min(total, s + step)) for s in range(0, total, step)]


def write_impressions(log: ClickLog, folder: str, files: int = 8) -> int:
    """ulr-spark's log: session_id, query, url, rank, click, day; one row per shown result.
    The url is the document's global id (query x 20 + doc), so a (query, url) pair is a PBM pair."""
    os.makedirs(folder, exist_ok=True)
    n = log.sessions
    day_of = (np.arange(n) * DAYS // max(1, n)).astype("int32")
    epoch = (FIRST_DAY - datetime.date(1970, 1, 1)).days
    for i, (start, stop) in enumerate(_parts(n, files)):
        rows = stop - start
        table = pa.table({
            "session_id": pa.array(np.repeat(np.arange(start, stop, dtype=np.int64), SHOWN)),
            "query": pa.array(np.repeat(log.query[start:stop], SHOWN)),
            "url": pa.array((log.query[start:stop, None] * DOCS_PER_QUERY + log.doc[start:stop]).ravel()),
            "rank": pa.array(np.tile(np.arange(1, SHOWN + 1, dtype=np.int32), rows)),
            "click": pa.array(log.clicks[start:stop].ravel().astype(np.int32)),
            "day": pa.array(np.repeat(day_of[start:stop] + epoch, SHOWN), type=pa.int32()).cast(pa.date32()),
        })
        pq.write_table(table, os.path.join(folder, f"part-{i:05d}.parquet"))
    return n * SHOWN


def write_sessions(log: ClickLog, folder: str, files: int = 8) -> None:
    """The library's format: one row per session, query_id, query_doc_ids (1-based pair ids,
    in rank order) and clicks, in files named part-*.parquet."""
    os.makedirs(folder, exist_ok=True)
    pairs = log.pair_ids()
    for i, (start, stop) in enumerate(_parts(log.sessions, files)):
        rows = stop - start
        offsets = pa.array(np.arange(0, (rows + 1) * SHOWN, SHOWN, dtype=np.int32))
        table = pa.table({
            "query_id": pa.array(log.query[start:stop].astype(np.int32)),
            "query_doc_ids": pa.ListArray.from_arrays(offsets, pa.array(pairs[start:stop].ravel())),
            "clicks": pa.ListArray.from_arrays(offsets, pa.array(log.clicks[start:stop].ravel().astype(np.int8))),
        })
        pq.write_table(table, os.path.join(folder, f"part-{i:05d}.parquet"))


def write_truth(log: ClickLog, path: str) -> None:
    np.savez(path, examination=log.examination, attractiveness=log.attractiveness)


def curve_error(learned: list[float] | np.ndarray, truth: list[float] | np.ndarray, slots: range = range(2, SHOWN + 1)) -> float:
    """ulr-spark's bias-curve error (ulr_spark/evaluation.py): the mean over slots 2..10 of
    |learned_k / learned_1 - true_k / true_1| / (true_k / true_1)."""
    learned, truth = np.asarray(learned, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    ratio, true_ratio = learned / learned[0], truth / truth[0]
    return float(np.mean([abs(ratio[k - 1] - true_ratio[k - 1]) / true_ratio[k - 1] for k in slots]))
