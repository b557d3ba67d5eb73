import os

import numpy as np
import pytest

from tests.conftest import ROOT
from ulr_spark.simulation.letor import LetorFormatError, read_letor

YAHOO = os.path.join(os.path.dirname(ROOT), "shared", "data", "yahoo_ltr_sample")


def write(path, text):
    path.write_text(text)
    return str(path)


def test_reads_qid_lines_with_comments_and_sparse_features(tmp_path):
    path = write(tmp_path / "a.txt", "2 qid:10 1:0.5 3:1.0 # doc a\n0 qid:10 2:0.25\n\n1 qid:11 3:2 #x\n")
    data = read_letor(path)
    assert data.labels.tolist() == [2, 0, 1]
    assert data.query_ids.tolist() == ["10", "10", "11"]
    assert data.features.shape == (3, 4)
    assert np.allclose(data.features[0], [0, 0.5, 0, 1.0]) and np.allclose(data.features[2], [0, 0, 0, 2.0])


def test_reads_query_sizes_from_a_lightgbm_query_file(tmp_path):
    path = write(tmp_path / "b.train", "1 1:1\n0 2:1\n3 1:0.5\n")
    write(tmp_path / "b.train.query", "2\n1\n")
    data = read_letor(path, num_features=5)
    assert data.query_ids.tolist() == ["0", "0", "1"] and data.features.shape == (3, 5)


@pytest.mark.parametrize(
    "text, query, message",
    [
        ("1 1:1\n0 2:1\n", None, "no .* with query sizes"),
        ("1 1:1\n0 2:1\n", "3\n", "sum to 3, but .* has 2 lines"),
        ("1 qid:1 1:1\n0 2:1\n", None, "1 of 2 lines have no qid"),
        ("x qid:1 1:1\n", None, ":1: the label 'x'"),
        ("1 qid:1 1=1\n", None, ":1: '1=1' is not index:value"),
    ],
)
def test_format_errors_name_the_file_and_the_rule(tmp_path, text, query, message):
    path = write(tmp_path / "c.txt", text)
    if query is not None:
        write(tmp_path / "c.txt.query", query)
    with pytest.raises(LetorFormatError, match=message):
        read_letor(path)


@pytest.mark.skipif(not os.path.isdir(YAHOO), reason="the Yahoo LTR sample in ../shared is absent")
def test_reads_the_yahoo_sample():
    train = read_letor(os.path.join(YAHOO, "rank.train"))
    assert train.features.shape[0] == 3005 and train.num_queries == 201
    assert set(np.unique(train.labels)) == {0, 1, 2, 3, 4}
    assert 0.0 <= train.features.min() and train.features.max() <= 1.0
