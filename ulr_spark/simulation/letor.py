"""Reading LETOR / svmlight ranking data (truth from a real dataset; docs/design.md, "Simulator").

Each line is ``label [qid:Q] index:value ...`` with an optional ``# comment``. Queries come
from ``qid:`` when the lines carry it, otherwise from a LightGBM-style ``<file>.query`` file that
lists the number of lines of each query in file order. Feature indices may start at 0 or 1;
missing features are 0, as svmlight defines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np


class LetorFormatError(ValueError):
    """A line or a query file does not follow the format; the message names file and line."""


@dataclass(frozen=True)
class LetorData:
    labels: np.ndarray  # [N] int
    features: np.ndarray  # [N, D] float32
    query_ids: np.ndarray  # [N] str, contiguous per query

    @property
    def num_queries(self) -> int:
        return len(np.unique(self.query_ids))


def _parse_lines(path: str) -> tuple[list[int], list[Optional[str]], list[dict[int, float]]]:
    labels, qids, rows = [], [], []
    with open(path) as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            tokens = line.split()
            try:
                label = int(float(tokens[0]))
            except ValueError:
                raise LetorFormatError(f"{path}:{number}: the label {tokens[0]!r} is not a number") from None
            qid = None
            values: dict[int, float] = {}
            for token in tokens[1:]:
                key, sep, value = token.partition(":")
                if not sep:
                    raise LetorFormatError(f"{path}:{number}: {token!r} is not index:value")
                if key == "qid":
                    qid = value
                    continue
                try:
                    values[int(key)] = float(value)
                except ValueError:
                    raise LetorFormatError(f"{path}:{number}: {token!r} is not index:value") from None
            labels.append(label)
            qids.append(qid)
            rows.append(values)
    return labels, qids, rows


def _query_ids_from_sizes(path: str, lines: int) -> list[str]:
    query_file = path + ".query"
    if not os.path.exists(query_file):
        raise LetorFormatError(f"{path}: the lines have no qid: and there is no {query_file} with query sizes")
    with open(query_file) as handle:
        sizes = [int(v) for v in handle.read().split()]
    if sum(sizes) != lines:
        raise LetorFormatError(f"{query_file}: query sizes sum to {sum(sizes)}, but {path} has {lines} lines")
    return [str(q) for q, size in enumerate(sizes) for _ in range(size)]


def read_letor(path: str, num_features: Optional[int] = None) -> LetorData:
    """Read one svmlight file (and its ``.query`` file when the lines have no ``qid:``)."""
    labels, qids, rows = _parse_lines(path)
    if not labels:
        raise LetorFormatError(f"{path}: no data lines")
    if all(q is not None for q in qids):
        query_ids = [str(q) for q in qids]
    elif any(q is not None for q in qids):
        missing = sum(q is None for q in qids)
        raise LetorFormatError(f"{path}: {missing} of {len(qids)} lines have no qid:")
    else:
        query_ids = _query_ids_from_sizes(path, len(labels))
    largest = max((max(r) for r in rows if r), default=0)
    width = num_features if num_features is not None else largest + 1
    if largest >= width:
        raise LetorFormatError(f"{path}: feature index {largest} is beyond num_features={width}")
    features = np.zeros((len(rows), width), dtype=np.float32)
    for i, row in enumerate(rows):
        for index, value in row.items():
            features[i, index] = value
    return LetorData(np.asarray(labels, dtype=np.int32), features, np.asarray(query_ids))
