import numpy as np
from pyspark.sql import functions as F

from tests.conftest import small_config
from ulr_spark import schema as S
from ulr_spark.delta_io import read_table
from ulr_spark.simulate import attraction, draw_catalogue, simulate


def test_attraction_follows_the_design_table():
    assert np.allclose(attraction(np.arange(5), 0.1), [0.1, 0.16, 0.28, 0.52, 1.0])


def test_catalogue_is_deterministic_and_labels_follow_the_shares(tmp_path):
    config = small_config(tmp_path, simulate={"num_queries": 400, "candidates_per_query": 20})
    a, b = draw_catalogue(config.simulate), draw_catalogue(config.simulate)
    assert a.catalogue[S.LABEL].tolist() == b.catalogue[S.LABEL].tolist()
    shares = np.bincount(a.catalogue[S.LABEL], minlength=5) / len(a.catalogue)
    assert np.allclose(shares, config.simulate.label_shares, atol=0.01)
    # The distractor the logging ranker uses carries no relevance.
    assert abs(np.corrcoef(a.catalogue["relevance"], a.catalogue["distractor"])[0, 1]) < 0.15


def test_hashed_draws_are_uniform_and_normal(spark):
    from ulr_spark.simulate import hashed_normal, hashed_uniform

    draws = spark.range(200_000).select(
        hashed_uniform(F.col("id"), salt=1).alias("u"), hashed_normal(F.col("id"), salt=3).alias("z")
    )
    stats = draws.agg(
        F.min("u"), F.max("u"), F.avg("u"), F.avg("z"), F.stddev("z"), F.avg((F.col("z") > 1.96).cast("double"))
    ).first()
    assert 0 < stats[0] < 1e-3 and 1 - 1e-3 < stats[1] < 1
    assert abs(stats[2] - 0.5) < 0.005 and abs(stats[3]) < 0.01 and abs(stats[4] - 1) < 0.01
    assert abs(stats[5] - 0.025) < 0.002


def test_simulated_log_follows_the_position_based_model(spark, tmp_path):
    config = small_config(
        tmp_path, simulate={"num_queries": 100, "candidates_per_query": 12, "num_requests": 20000, "seed": 3}
    )
    counts = simulate(spark, config, "sim-test")
    log = read_table(spark, config.tables.path("impressions"))
    first = log.select(F.sum(F.col("clicked") * F.hash("request_id", "item_id", "position"))).first()[0]
    simulate(spark, config, "sim-test-again")
    log = read_table(spark, config.tables.path("impressions"))
    assert log.select(F.sum(F.col("clicked") * F.hash("request_id", "item_id", "position"))).first()[0] == first, (
        "the same config must simulate the same log"
    )
    assert log.count() == counts["impressions"] == 200_000
    assert log.select("event_date").distinct().count() == 2
    assert log.groupBy("request_id", "position").count().where("count > 1").count() == 0

    labels = read_table(spark, config.tables.path("truth_labels"))
    heldout = labels.where(F.col(S.SPLIT) == S.SPLIT_HELDOUT).select(S.QUERY_ID).distinct()
    assert heldout.count() == 20
    assert log.join(heldout, S.QUERY_ID).count() == 0, "held-out queries never appear in the log"

    # Clicks / (examination x attraction) is flat across slots when the simulator is right.
    att = {0: 0.1, 1: 0.16, 2: 0.28, 3: 0.52, 4: 1.0}
    joined = log.join(labels.select(S.QUERY_ID, S.ITEM_ID, S.LABEL), [S.QUERY_ID, S.ITEM_ID])
    per_slot = (
        joined.withColumn("att", F.element_at(F.create_map(*[F.lit(v) for kv in att.items() for v in kv]), F.col(S.LABEL)))
        .groupBy("position")
        .agg(F.sum("clicked").alias("clicks"), F.sum("att").alias("expected"))
        .orderBy("position")
        .collect()
    )
    truth = read_table(spark, config.tables.path("truth_examination")).orderBy(S.POSITION).collect()
    theta = np.array([r["examination_absolute"] for r in truth])
    ratio = np.array([r["clicks"] / r["expected"] for r in per_slot]) / theta
    assert np.allclose(ratio, 1.0, atol=0.12), ratio
