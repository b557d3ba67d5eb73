import numpy as np
import pytest
from pyspark.sql import functions as F

from tests.conftest import small_config
from ulr_spark import schema
from ulr_spark.config import ConfigError
from ulr_spark.io.delta import read_table
from ulr_spark.simulation.catalogue import attraction, draw_catalogue
from ulr_spark.simulation.simulator import simulate


def test_attraction_follows_the_design_table():
    assert np.allclose(attraction(np.arange(5), 0.1), [0.1, 0.16, 0.28, 0.52, 1.0])


def test_catalogue_is_deterministic_and_labels_follow_the_shares(tmp_path):
    config = small_config(tmp_path, simulate={"num_queries": 400, "candidates_per_query": 20})
    a, b = draw_catalogue(config.simulate), draw_catalogue(config.simulate)
    assert a.catalogue[schema.LABEL].tolist() == b.catalogue[schema.LABEL].tolist()
    shares = np.bincount(a.catalogue[schema.LABEL], minlength=5) / len(a.catalogue)
    assert np.allclose(shares, config.simulate.label_shares, atol=0.01)
    # The distractor the logging ranker uses carries no relevance.
    assert abs(np.corrcoef(a.catalogue["relevance"], a.catalogue["distractor"])[0, 1]) < 0.15


def test_hashed_draws_are_uniform_and_normal(spark):
    from ulr_spark.simulation.simulator import hashed_normal, hashed_uniform

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
    heldout = labels.where(F.col(schema.SPLIT) == schema.SPLIT_HELDOUT).select(schema.QUERY_ID).distinct()
    assert heldout.count() == 20
    assert log.join(heldout, schema.QUERY_ID).count() == 0, "held-out queries never appear in the log"

    # Clicks / (examination x attraction) is flat across slots when the simulator is right.
    att = {0: 0.1, 1: 0.16, 2: 0.28, 3: 0.52, 4: 1.0}
    joined = log.join(labels.select(schema.QUERY_ID, schema.ITEM_ID, schema.LABEL), [schema.QUERY_ID, schema.ITEM_ID])
    per_slot = (
        joined.withColumn("att", F.element_at(F.create_map(*[F.lit(v) for kv in att.items() for v in kv]), F.col(schema.LABEL)))
        .groupBy("position")
        .agg(F.sum("clicked").alias("clicks"), F.sum("att").alias("expected"))
        .orderBy("position")
        .collect()
    )
    truth = read_table(spark, config.tables.path("truth_examination")).orderBy(schema.POSITION).collect()
    theta = np.array([r["examination_absolute"] for r in truth])
    ratio = np.array([r["clicks"] / r["expected"] for r in per_slot]) / theta
    assert np.allclose(ratio, 1.0, atol=0.12), ratio


def _shown(spark, tmp_path, **simulate_settings):
    from ulr_spark.simulation.simulator import shown_items

    grid = simulate_settings.pop("grid_columns", 0)
    settings = {"num_queries": 60, "candidates_per_query": 12, "num_requests": 400, "seed": 5, **simulate_settings}
    config = small_config(tmp_path, simulate=settings, examples={"grid_columns": grid})
    truth = draw_catalogue(config.simulate)
    rows = shown_items(spark, config, truth).select(
        "request_index", schema.QUERY_ID, schema.ITEM_ID, "slot", "attraction", "salient", "examination", "p_click"
    )
    return config, rows.toPandas().sort_values(["request_index", "slot"])


def _expected_neighbour_examination(frame, theta, effect, grid_columns, signal="attraction"):
    expected = []
    for _, page in frame.groupby("request_index"):
        attraction = dict(zip(page["slot"], page[signal]))
        for slot in page["slot"]:
            if grid_columns:
                col = (slot - 1) % grid_columns + 1
                near = [slot - grid_columns, slot + grid_columns]
                near += [slot - 1] if col > 1 else []
                near += [slot + 1] if col < grid_columns else []
            else:
                near = [slot - 1, slot + 1]
            strongest = max([attraction.get(n, 0.0) for n in near])
            expected.append(theta[slot - 1] * (1 - effect * strongest))
    return np.array(expected)


def test_context_scenario_examination_drops_next_to_attractive_items(spark, tmp_path):
    config, frame = _shown(spark, tmp_path, scenario="context", neighbour_effect=0.6)
    theta = np.asarray(config.simulate.examination)
    expected = _expected_neighbour_examination(frame, theta, 0.6, 0)
    assert np.allclose(frame["examination"].to_numpy(), expected)
    assert np.allclose(frame["p_click"], frame["examination"] * frame["attraction"])
    assert (frame["examination"] < theta[frame["slot"] - 1] - 1e-9).mean() > 0.9


def test_context_scenario_on_a_grid_uses_left_right_above_below(spark, tmp_path):
    config, frame = _shown(spark, tmp_path, scenario="context", neighbour_effect=0.6, grid_columns=5)
    theta = np.asarray(config.simulate.examination)
    grid_expected = _expected_neighbour_examination(frame, theta, 0.6, 5)
    list_expected = _expected_neighbour_examination(frame, theta, 0.6, 0)
    assert np.allclose(frame["examination"].to_numpy(), grid_expected)
    assert not np.allclose(frame["examination"].to_numpy(), list_expected), "a grid is not a list"


def test_mixture_scenario_has_requests_that_click_the_top_whatever_it_shows(spark, tmp_path):
    config, frame = _shown(spark, tmp_path, scenario="mixture", mixture_share=0.4, mixture_top_clicks=[0.7, 0.3])
    theta = np.asarray(config.simulate.examination)
    top_clicker = frame.groupby("request_index").apply(
        lambda page: np.allclose(page.sort_values("slot")["p_click"].to_numpy()[:3], [0.7, 0.3, 0.0])
    )
    assert 0.33 < top_clicker.mean() < 0.47
    others = frame[frame["request_index"].isin(top_clicker[~top_clicker].index)]
    assert np.allclose(others["p_click"], theta[others["slot"] - 1] * others["attraction"])


def _blended_page(salient, plain, size, salient_first=True):
    """Salient items in slots 1, 3, ..., plain ones in 2, 4, ... (the other way round unless
    salient_first); when a class runs out, the other fills the rest."""
    salient, plain, page = list(salient), list(plain), []
    if not salient_first:
        salient, plain = plain, salient
    while len(page) < size:
        first, other = (salient, plain) if len(page) % 2 == 0 else (plain, salient)
        page.append((first or other).pop(0))
    return page


def test_blended_layout_alternates_salient_and_plain_items_and_neighbours_send_salience(spark, tmp_path):
    """Without ranker noise every page of a query is the blend of its salient and plain
    candidates, each in score order; with noise the order within a class moves, the alternation
    does not. The examination drops next to a salient neighbour, whatever its label."""
    blended = {"scenario": "context", "layout": "blended", "neighbour_signal": "salience", "salient_share": 0.5}
    still = {"relevance_weight": 1.0, "distractor_weight": 1.0, "noise": 0.0}
    config, frame = _shown(spark, tmp_path, **blended, neighbour_effect=0.6, logging_ranker=still)
    catalogue = draw_catalogue(config.simulate).catalogue
    catalogue["score"] = catalogue[schema.TRUE_RELEVANCE] + catalogue[schema.DISTRACTOR]
    expected, n_salient = {}, {}
    for query, items in catalogue.sort_values("score", ascending=False).groupby(schema.QUERY_ID):
        salient = items["salient"] == 1
        expected[query] = [
            _blended_page(items.loc[salient, schema.ITEM_ID], items.loc[~salient, schema.ITEM_ID], 10, first) for first in (True, False)
        ]
        n_salient[query] = int(salient.sum())
    pages = frame.groupby("request_index").agg(
        query=(schema.QUERY_ID, "first"), page=(schema.ITEM_ID, list), first=("salient", "first")
    )
    first = pages["first"] == 1
    assert all(page == expected[query][0 if f else 1] for query, page, f in zip(pages["query"], pages["page"], first))
    # Half the pages start with a salient item, so slot parity does not tell an item's class.
    assert 0.35 < first.mean() < 0.65
    shown_counts = pages["query"].map(n_salient)
    assert (shown_counts < 5).any() and (shown_counts > 7).any(), "both classes run out on some page"

    theta = np.asarray(config.simulate.examination)
    assert np.allclose(frame["examination"], _expected_neighbour_examination(frame, theta, 0.6, 0, signal="salient"))
    assert not np.allclose(frame["examination"], _expected_neighbour_examination(frame, theta, 0.6, 0))

    _, noisy = _shown(spark, tmp_path, **blended, randomised_share=0.5)
    for _, page in noisy.groupby("request_index"):
        n = n_salient[page[schema.QUERY_ID].iloc[0]]
        page = page.sort_values("slot")
        assert page["salient"].tolist() == _blended_page([1] * n, [0] * (12 - n), 10, page["salient"].iloc[0] == 1)
    slates = noisy.groupby("request_index").agg(query=(schema.QUERY_ID, "first"), page=(schema.ITEM_ID, tuple))
    assert slates.groupby("query")["page"].nunique().max() > 1, "ranker noise moves items within a class"


def test_trust_scenario_clicks_irrelevant_items_the_more_the_higher_they_are(spark, tmp_path):
    config, frame = _shown(spark, tmp_path, scenario="trust")
    theta = np.asarray(config.simulate.examination)[frame["slot"] - 1]
    k, a = frame["slot"].to_numpy(), frame["attraction"].to_numpy()
    assert np.allclose(frame["examination"], theta)
    assert np.allclose(frame["p_click"], theta * (a * (1 - (k + 1) / 100) + (1 - a) * 0.65 / k))
    assert not np.allclose(frame["p_click"], theta * a)
    for settings, key in [({"scenario": "trust", "slate_size": 99, "candidates_per_query": 99, "examination": [0.5] * 99}, "slate_size"),
                          ({"layout": "blended"}, "layout"), ({"neighbour_signal": "salience"}, "neighbour_signal"),
                          ({"source": "letor", "letor": {"train_path": "x"}, "hidden_relevance": 1.0}, "hidden_relevance")]:
        with pytest.raises(ConfigError, match=f"simulate.{key}"):
            small_config(tmp_path, simulate=settings)


def test_hidden_relevance_moves_labels_and_ranker_but_no_feature(spark, tmp_path):
    sizes = {"num_queries": 50, "candidates_per_query": 12, "seed": 5}
    base = draw_catalogue(small_config(tmp_path, simulate=sizes).simulate).catalogue
    # This config's catalogue as drawn before hidden relevance and salience existed.
    assert int((base[schema.LABEL].to_numpy() * np.arange(len(base))).sum()) == 166470
    heldout = base.loc[base[schema.SPLIT] == schema.SPLIT_HELDOUT, schema.QUERY_ID].unique()
    assert sorted(int(q[1:]) for q in heldout) == [6, 7, 25, 35, 36, 37, 38, 41, 42, 46]
    rows = [0, 1, 2, 599]
    assert np.allclose(base[schema.TRUE_RELEVANCE].to_numpy()[rows], [-1.173423629, -0.645206771, -2.61855511, 1.319154317])
    assert np.allclose(base[schema.DISTRACTOR].to_numpy()[rows], [0.951681364, 0.089104894, -0.241098632, -1.671293192])

    config = small_config(tmp_path, simulate={**sizes, "hidden_relevance": 1.0, "num_requests": 300})
    hidden = draw_catalogue(config.simulate).catalogue
    assert np.array_equal(np.stack(hidden[schema.FEATURES]), np.stack(base[schema.FEATURES]))
    for column in (schema.DISTRACTOR, "salient", schema.SPLIT):
        assert hidden[column].equals(base[column]), column
    assert (hidden[schema.LABEL] != base[schema.LABEL]).mean() > 0.3
    # Half the variance of the true relevance is hidden: its correlation with f(x) is 1 / sqrt(2).
    assert 0.6 < np.corrcoef(hidden[schema.TRUE_RELEVANCE], base[schema.TRUE_RELEVANCE])[0, 1] < 0.8

    simulate(spark, config, "hidden-relevance")
    labels = read_table(spark, config.tables.path("truth_labels")).toPandas().sort_values([schema.QUERY_ID, schema.ITEM_ID])
    assert labels[schema.LABEL].tolist() == hidden[schema.LABEL].tolist()
    assert np.allclose(labels[schema.TRUE_RELEVANCE], hidden[schema.TRUE_RELEVANCE])
    assert np.allclose(labels[schema.DISTRACTOR], hidden[schema.DISTRACTOR])


def test_letor_source_uses_the_files_labels_and_holds_out_the_test_queries(spark, tmp_path):
    train = tmp_path / "rank.train"
    test = tmp_path / "rank.test"
    rng = np.random.default_rng(0)

    def lines(queries, offset):
        out = []
        for q in range(queries):
            for _ in range(12):
                label = int(rng.integers(0, 5))
                out.append(f"{label} qid:{q + offset} 1:{label / 4 + rng.normal(0, .1):.3f} 2:{rng.random():.3f} 7:{rng.random():.3f}")
        return "\n".join(out) + "\n"

    train.write_text(lines(30, 0))
    test.write_text(lines(10, 100))
    config = small_config(
        tmp_path / "tables",
        simulate={"source": "letor", "letor": {"train_path": str(train), "test_path": str(test)}, "num_requests": 500},
    )
    counts = simulate(spark, config, "letor-test")
    labels = read_table(spark, config.tables.path("truth_labels")).toPandas()
    assert counts["candidates"] == 480 and counts["queries"] == 40
    assert (labels[schema.SPLIT] == schema.SPLIT_HELDOUT).sum() == 120
    candidates = read_table(spark, config.tables.path("candidates")).toPandas()
    assert len(candidates[schema.FEATURES].iloc[0]) == 8  # indices up to 7, from 0
    log = read_table(spark, config.tables.path("impressions"))
    assert log.count() == counts["impressions"] == 500 * 10
    heldout = set(labels.loc[labels[schema.SPLIT] == schema.SPLIT_HELDOUT, schema.QUERY_ID])
    assert not heldout & {r[0] for r in log.select("query_id").distinct().collect()}


def test_zipf_popularity_and_repeated_slates(spark, tmp_path):
    """Head queries take most requests, and a query shows its usual slate except in the
    randomised share of requests."""
    s, n_queries = 1.1, 100
    config = small_config(
        tmp_path,
        simulate={"num_queries": n_queries, "heldout_fraction": 0.2, "candidates_per_query": 12, "num_requests": 6000,
                  "query_popularity": "zipf", "zipf_exponent": s, "randomised_share": 0.2, "seed": 9},
    )
    simulate(spark, config, "zipf")
    log = read_table(spark, config.tables.path("impressions")).toPandas()
    slates = log.sort_values("position").groupby("request_id").agg(
        query=(schema.QUERY_ID, "first"), slate=(schema.ITEM_ID, tuple)
    )
    per_query = slates["query"].value_counts()
    n_train = n_queries - 20

    def cdf(x):
        return (x ** (1 - s) - 1) / ((n_train + 1) ** (1 - s) - 1)

    expected_head = [cdf(r + 1) - cdf(r) for r in (1, 2, 3)]
    assert np.allclose(per_query.iloc[:3].to_numpy() / 6000, expected_head, atol=0.015), per_query.iloc[:3]
    # The usual slate of each head query: shown by about 80% of its requests (the 20% that are
    # randomised rarely reproduce it by chance).
    for query in per_query.index[:5]:
        shown = slates[slates["query"] == query]["slate"].value_counts()
        assert 0.72 < shown.iloc[0] / shown.sum() < 0.9, (query, shown.iloc[0] / shown.sum())
    assert per_query.size > 0.9 * n_train, "the tail is still asked"
