"""Merging identical slates is lossless (docs/design.md, "Examples"): on a log where head queries repeat
their slate, the merged examples give every model the same loss and the same gradients as one
row per request, and so the same trained model."""

import numpy as np
import pytest
import torch

from tests.conftest import small_config
from ulr_spark import schema
from ulr_spark.examples.slates import build_examples
from ulr_spark.io.delta import read_table
from ulr_spark.models.registry import build_model
from ulr_spark.models.spec import ModelSpec
from ulr_spark.simulation.simulator import simulate

K, D = 6, 4


@pytest.fixture(scope="module")
def merged_and_unmerged(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("aggregation")
    settings = {
        "num_queries": 40, "candidates_per_query": 9, "slate_size": K, "num_features": D, "num_requests": 3000,
        "query_popularity": "zipf", "zipf_exponent": 1.2, "randomised_share": 0.1, "seed": 4,
    }
    merged_config = small_config(root, simulate=settings, examples={"max_slate_size": K})
    unmerged_config = small_config(
        root, simulate=settings, tables={"examples": "examples_unmerged"},
        examples={"max_slate_size": K, "merge_identical_slates": False},
    )
    simulate(spark, merged_config, "agg")
    summaries = build_examples(merged_config, spark, "agg"), build_examples(unmerged_config, spark, "agg")
    tables = [
        read_table(spark, c.tables.path("examples")).select(*schema.TRAINING_COLUMNS).toPandas()
        for c in (merged_config, unmerged_config)
    ]
    return summaries, [_tensors(t) for t in tables]


def _tensors(frame):
    return (
        torch.from_numpy(np.stack(frame[schema.FEATURES].to_numpy()).astype(np.float32).reshape(len(frame), K, D)),
        torch.from_numpy(np.stack(frame[schema.POSITIONS].to_numpy()).astype(np.int64)),
        torch.from_numpy(frame[schema.CONTEXT_ID].to_numpy().astype(np.int64)),
        torch.from_numpy(np.stack(frame[schema.CLICKS].to_numpy()).astype(np.float32)),
        torch.from_numpy(frame[schema.IMPRESSIONS].to_numpy().astype(np.float32)),
    )


def _model(architecture, **options):
    torch.manual_seed(0)
    spec = ModelSpec(name=architecture, num_features=D, max_slate_size=K, num_contexts=1, hidden_sizes=[8], **options)
    return build_model(spec).double()


def _loss_and_gradients(model, batch):
    features, positions, context_ids, clicks, impressions = batch
    model.zero_grad()
    loss, weight = model.loss(features.double(), positions, context_ids, clicks.double(), impressions.double())
    loss.backward()
    return loss.item(), float(weight), [p.grad.clone() for p in model.parameters()]


def test_merging_compresses_the_log_and_keeps_every_impression_and_click(merged_and_unmerged):
    (merged, unmerged), (m, u) = merged_and_unmerged
    assert merged.requests == unmerged.requests == 3000
    assert unmerged.examples == 3000 and unmerged.compression == 1.0
    assert merged.compression > 4, merged
    assert float(m[4].sum()) == float(u[4].sum()) == 3000
    assert float(m[3].sum()) == float(u[3].sum()), "clicks are summed, never lost"


@pytest.mark.parametrize(
    "architecture,options",
    [("naive", {}), ("additive", {}), ("pal", {}), ("dot_product", {}), ("xpa", {}), ("mixem", {"mixem_components": 1})],
)
def test_merged_rows_give_the_same_loss_and_gradients(merged_and_unmerged, architecture, options):
    _, (merged, unmerged) = merged_and_unmerged
    loss_m, weight_m, grads_m = _loss_and_gradients(_model(architecture, **options), merged)
    loss_u, weight_u, grads_u = _loss_and_gradients(_model(architecture, **options), unmerged)
    assert weight_m == weight_u
    assert loss_m == pytest.approx(loss_u, rel=1e-9)
    for g_m, g_u in zip(grads_m, grads_u):
        assert torch.allclose(g_m, g_u, rtol=1e-7, atol=1e-9)


def test_the_same_model_is_trained_with_and_without_merging(merged_and_unmerged):
    _, batches = merged_and_unmerged
    trained = []
    for batch in batches:
        model = _model("additive")
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        features, positions, context_ids, clicks, impressions = batch
        for _ in range(30):
            optimizer.zero_grad()
            loss, weight = model.loss(features.double(), positions, context_ids, clicks.double(), impressions.double())
            (loss / weight).backward()
            optimizer.step()
        trained.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(trained[0], trained[1], rtol=1e-6, atol=1e-8)
    assert not torch.allclose(trained[0], torch.cat([p.detach().flatten() for p in _model("additive").parameters()]))


def test_mixem_with_two_components_is_not_lossless_under_merging(merged_and_unmerged):
    """Its E-step weighs whole lists, and a merged row is one mean list: this is why
    examples.merge_identical_slates can be turned off for an exact mixem."""
    _, (merged, unmerged) = merged_and_unmerged
    loss_m, _, _ = _loss_and_gradients(_model("mixem", mixem_components=2), merged)
    loss_u, _, _ = _loss_and_gradients(_model("mixem", mixem_components=2), unmerged)
    assert abs(loss_m - loss_u) > 1e-6 * abs(loss_u)
