"""Serving without ulr-spark: the exported relevance model, the Python API and Spark scoring
give the same scores; the exported file needs only torch; the TorchScript hash is Spark's.

Models are untrained (random weights, wide tables included): parity does not need training."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F

from tests.conftest import small_config
from ulr_spark import schema
from ulr_spark.config import ConfigError
from ulr_spark.features.encoding import CategoricalEncoding, FeatureEncoder, NumericEncoding
from ulr_spark.io.artifacts import publish_run, save_artifact, staging_run_dir
from ulr_spark.io.delta import read_table
from ulr_spark.models.registry import build_model
from ulr_spark.models.spec import ModelSpec
from ulr_spark.serving import export_run, load_exported, load_relevance_model
from ulr_spark.serving.xxhash import scripted

# Spark 4.0's xxhash64(s, lit(42)) -- what FeatureEncoder hashes -- recorded once (one local
# query). PREFIX: s = ALPHABET[:n] for n = 0..40, every tail branch of XXH64 (32-byte stripes,
# 8- and 4-byte words, single bytes).
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ"
PREFIX = [
    3524361793169708440, 3221748083033855235, -8953396168839239735, -7147881818510587412, 2269940800745134268,
    7854518939702541260, 52628826145177770, -2687025454398191685, 1936914872528670887, -6508172106980601830,
    -7235444110561519521, -9194789349316588071, 7355422707677286299, 8610238420553060534, 643937012819544625,
    -7062536173987458282, 3182321841559565919, 8402922928219008832, 4467205328463490377, 4015077672793675355,
    820842175665416725, 5684303038504546377, 2231411326188523295, -6772903556415339978, 8267768863266870835,
    8228573532497465987, -2504311668088587981, 3264851774901231315, -8860003218491647699, -9029913434814264121,
    4807784317203749828, 5803329245899011448, -2335237671691086216, 217749064911099694, 8546240255802576314,
    7752678967637901526, 9211649018945278343, 5895874772989718504, -623541183190811013, 2812551318137344252,
    1724524455184349865,
]
SPECIAL = {
    "é": 8664668084791887053,
    "日本": -2931504036357989685,
    "😀": 8884465138446105955,
    "naïve café 日本語 😀🚀 and more text past 32 bytes": -4549943712012752652,
    "q7|i3": -902624404369317309,
    " ": -7308755378253153739,
    "null": 6175219990060611128,
    None: -387659249110444264,  # a null column is skipped: the hash of lit(42) alone, seeded 42
}
# xxhash64(a, b, lit(42)): the (query_id, item_id) pair field.
PAIRS = [
    ("", "", 8138744381992965260),
    ("abcdefg", "a", -5127172070007447912),
    ("abcdefghijklmnopqrstu", "abc", 1901901615064000021),
    ("abcdefghijklmnopqrstuvwxyz012345678", "abcde", 1859896247041297650),
    ("日本", "abcdef", 5465471164305276430),
]


def test_the_scripted_hash_is_sparks_xxhash64():
    h = scripted()
    assert [h([ALPHABET[:n]], 42) for n in range(41)] == PREFIX
    assert {s: h([s], 42) for s in SPECIAL} == SPECIAL
    assert [h([a, b], 42) for a, b, _ in PAIRS] == [p[2] for p in PAIRS]


ENCODER = FeatureEncoder(
    array_column="features", array_length=3,
    numeric=(NumericEncoding("price", 10.0, 4.0, True), NumericEncoding("rating", 3.0, 1.5, False)),
    categorical=(
        CategoricalEncoding("brand", ("brand",), "vocabulary", 3, 2, ("acme", "zeta")),
        CategoricalEncoding("seller", ("seller",), "hash", 7, 0),
        CategoricalEncoding("item_id", ("item_id",), "hash", 11, 3),
        CategoricalEncoding("query_item", ("query_id", "item_id"), "hash", 13, 2),
    ),
)
MODELS = ("additive", "dot_product")
NAN, INF = float("nan"), float("inf")
# query, item, features, price, rating, brand, seller: nulls, NaN and inf among the numerics, an
# unseen and a null brand, a null seller, non-ASCII and long ids.
ROWS = [
    ("q1", "i1", [0.5, -1.0, 2.0], 12.0, 4, "acme", "s1"),
    ("q1", "é", [0.1, 0.2, 0.3], None, 2, "zeta", "s2"),
    ("q1", "日本", [1.5, 0.0, -0.5], NAN, None, "unseen", None),
    ("q2", "i1", [0.0, 0.0, 0.0], INF, 5, None, "s1"),
    ("q2", "😀 item with a long id past thirty-two bytes", [-2.0, 1.0, 0.25], 7.5, 1, "acme", "日本"),
    ("日本語", "i9", [3.0, 3.0, 3.0], -4.0, 3, "zeta", ""),
]
COLUMNS = [schema.QUERY_ID, schema.ITEM_ID, "features", "price", "rating", "brand", "seller"]


def publish_encoded_run(models_root, run_id):
    torch.manual_seed(3)
    staging = staging_run_dir(models_root, run_id)
    card = {"contexts": {"0": "default"}, "feature_encoder": json.loads(ENCODER.to_json()), "ulr_spark_version": "test"}
    for name in MODELS:
        spec = ModelSpec(name, ENCODER.width, 4, 1, [5], categorical_buckets=ENCODER.categorical_buckets,
                         embedding_dims=ENCODER.embedding_dims)
        model = build_model(spec)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.5)  # wide tables start at 0: make every part count
        save_artifact(os.path.join(staging, name), model, card)
    publish_run(staging, models_root, run_id, {"models": list(MODELS)})


# Runs in `python -I`: a meta-path hook placed before anything else refuses ulr_spark, Spark,
# pandas, pyarrow and petastorm, then only torch and json score the exported model.
STANDALONE = r"""
import sys
BLOCKED = ("ulr_spark", "pyspark", "pandas", "pyarrow", "petastorm")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked in this test: " + name)
        return None
sys.meta_path.insert(0, Block())
import json, math, os
import torch
directory, inputs_path = sys.argv[1], sys.argv[2]
with open(os.path.join(directory, "signature.json")) as handle:
    signature = json.load(handle)
with open(inputs_path) as handle:
    inputs = json.load(handle)
module = torch.jit.load(os.path.join(directory, signature["file"]))
array = torch.tensor(inputs["array"], dtype=torch.float32)
numeric = torch.tensor(inputs["numeric"], dtype=torch.float64)
with torch.no_grad():
    scores = module(array, numeric, inputs["text"]).tolist()
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"scores": scores, "leaked": leaked}))
"""


def standalone_inputs(signature):
    """The forward inputs of ROWS, built from the signature alone (as a serving system would)."""
    by_name = {i["name"]: i for i in signature["inputs"]}
    index = {c: k for k, c in enumerate(COLUMNS)}
    number = lambda v: NAN if v is None else float(v)  # noqa: E731
    return {
        "array": [r[index[by_name["array"]["columns"][0]]] for r in ROWS],
        "numeric": [[number(r[index[c]]) for c in by_name["numeric"]["columns"]] for r in ROWS],
        "text": [[r[index[c]] for r in ROWS] for c in by_name["text"]["columns"]],
    }


def test_exported_model_python_api_and_spark_give_the_same_scores(spark, tmp_path):
    config = small_config(tmp_path, score={"source": "candidates"})
    models_root = config.tables.path("models")
    publish_encoded_run(models_root, "r1")
    frame = pd.DataFrame(ROWS, columns=COLUMNS).astype({"rating": "Int64"})
    spark.createDataFrame(
        [tuple(r) for r in ROWS],
        f"{schema.QUERY_ID} string, {schema.ITEM_ID} string, features array<double>, price double, rating int, brand string, seller string",
    ).write.format("delta").save(config.tables.path("candidates"))

    from ulr_spark.scoring import score

    score(config, spark, "r1")
    rows = read_table(spark, config.tables.path("scores")).where(F.col(schema.RUN_ID) == "r1").collect()
    spark_scores = {(r[schema.MODEL], r[schema.QUERY_ID], r[schema.ITEM_ID]): r[schema.SCORE] for r in rows}
    assert len(spark_scores) == len(MODELS) * len(ROWS)

    # Spark's own hash of a few of the tricky ids, beside the recorded constants.
    ids = spark.createDataFrame([(s,) for s in ("é", "日本", None, ALPHABET[:33])], "s string")
    assert [r[0] for r in ids.select(F.xxhash64("s", F.lit(42))).collect()] == [SPECIAL["é"], SPECIAL["日本"], SPECIAL[None], PREFIX[33]]

    written = export_run(models_root, str(tmp_path / "export"), "r1")
    assert sorted(os.path.relpath(p, tmp_path / "export") for p in written) == [f"{m}/relevance_model.pt" for m in MODELS]
    inputs_path = tmp_path / "inputs.json"
    for name in MODELS:
        expected = np.array([spark_scores[(name, r[0], r[1])] for r in ROWS])
        assert np.ptp(expected) > 1e-2, "scores that do not vary would hide a broken transform"
        api = load_relevance_model(models_root, "r1", model=name).score(frame)
        np.testing.assert_allclose(api, expected, rtol=0, atol=1e-5, err_msg=f"{name}: Python API vs Spark")
        directory = str(tmp_path / "export" / name)
        np.testing.assert_allclose(load_exported(directory).score(frame.iloc[::-1]), expected[::-1], rtol=0, atol=1e-5)
        with open(os.path.join(directory, "signature.json")) as handle:
            signature = json.load(handle)
        assert (signature["model"], signature["run_id"]) == (name, "r1")
        inputs_path.write_text(json.dumps(standalone_inputs(signature)))
        run = subprocess.run(
            [sys.executable, "-I", "-c", STANDALONE, directory, str(inputs_path)], capture_output=True, text=True, timeout=120,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["leaked"] == []
        np.testing.assert_allclose(result["scores"], expected, rtol=0, atol=1e-5, err_msg=f"{name}: exported file vs Spark")


def test_the_api_names_a_missing_column_and_a_wrong_array_length(tmp_path):
    publish_encoded_run(str(tmp_path), "r1")
    scorer = load_relevance_model(str(tmp_path), model="additive")
    frame = pd.DataFrame(ROWS, columns=COLUMNS)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['seller'\]"):
        scorer.score(frame.drop(columns=["seller"]))
    short = frame.assign(features=[[1.0, 2.0]] + list(frame["features"][1:]))
    with pytest.raises(ValueError, match=r"column 'features' must hold 3 values per row \(not null\), broken by 1 of 6"):
        scorer.score(short)
    with pytest.raises(ValueError, match="categorical column 'brand' must be text, integer or boolean"):
        scorer.score(frame.assign(brand=1.5))
    with pytest.raises(ValueError, match=r"holds 2 models \['additive', 'dot_product'\]"):
        load_relevance_model(str(tmp_path))


def test_export_command_writes_one_model_and_its_signature(tmp_path, capsys):
    from ulr_spark.cli import main

    config = tmp_path / "conf.yaml"
    config.write_text(f"tables:\n  root: {tmp_path}\n")
    publish_encoded_run(str(tmp_path / "models"), "r1")
    out = tmp_path / "serving"
    assert main(["export", "--config", str(config), "--out", str(out), "--model", "dot_product"]) == 0
    assert sorted(os.listdir(out / "dot_product")) == ["relevance_model.pt", "signature.json"]
    assert not (out / "additive").exists()
    signature = json.loads((out / "dot_product" / "signature.json").read_text())
    assert [i["columns"] for i in signature["inputs"]] == [["features"], ["price", "rating"], ["brand", "seller", "item_id", "query_id"]]
    assert main(["export", "--config", str(config), "--out", str(out), "--model", "pal"]) == 1
    assert "run 'r1' has no model 'pal'; its models: ['additive', 'dot_product']" in capsys.readouterr().err


def test_registering_puts_the_exported_model_in_mlflows_registry(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    from ulr_spark.io.artifacts import run_artifacts
    from ulr_spark.io.tracking import register_relevance_models

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow-skinny has no database backend
    uri = "file://" + str(tmp_path / "mlruns")
    config = small_config(tmp_path, tracking={"mlflow": True, "tracking_uri": uri, "register_model": True})
    publish_encoded_run(config.tables.path("models"), "r1")
    artifacts = run_artifacts(config.tables.path("models"), "r1")
    assert register_relevance_models(config, "r1", artifacts[:1]) == [("ulr-spark-additive", "1")]
    assert register_relevance_models(config, "r1", artifacts[:1]) == [("ulr-spark-additive", "2")]
    version = MlflowClient(uri).get_model_version("ulr-spark-additive", "2")
    assert version.tags["ulr_spark.run_id"] == "r1"
    folder = download_artifacts(version.source, dst_path=str(tmp_path / "download"), tracking_uri=uri)
    frame = pd.DataFrame(ROWS, columns=COLUMNS)
    expected = load_relevance_model(config.tables.path("models"), "r1", model="additive").score(frame)
    np.testing.assert_allclose(load_exported(folder).score(frame), expected, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="register_model.*needs tracking.mlflow"):
        small_config(tmp_path, tracking={"register_model": True})
