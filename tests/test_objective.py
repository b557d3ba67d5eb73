"""What a training step optimises: every slot impression weighs the same, whatever else is in
its batch (a constant loss normaliser), ranks draw different dropout masks, and heavy merged
rows are split into pieces with the same likelihood."""

import pytest
import torch

from ulr_spark import schema
from ulr_spark.models.losses import per_row_click_nll
from ulr_spark.models.registry import TrainingObjective, build_model
from ulr_spark.models.spec import ModelSpec
from ulr_spark.training.loaders import SlateBatch
from ulr_spark.training.worker import seed_process, train_step

K, D = 3, 2


def _batch(rows, impressions, seed):
    g = torch.Generator().manual_seed(seed)
    n = torch.full((rows,), float(impressions))
    clicks = torch.floor(torch.rand(rows, K, generator=g) * (n.unsqueeze(-1) + 1))
    return SlateBatch(
        features=torch.randn(rows, K, D, generator=g), positions=torch.tensor([[1, 2, 3]] * rows),
        context_ids=torch.zeros(rows, dtype=torch.int64), clicks=clicks, impressions=n,
    )


def _gradient(objective, batch, normaliser=None):
    """The gradient a train_step leaves behind (SGD with lr 0: the weights do not move)."""
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.0)
    if normaliser is None:  # the whole objective at once, for reference
        objective.zero_grad()
        loss, weight = objective(batch.features, batch.positions, batch.context_ids, batch.clicks, batch.impressions)
        return loss, weight
    train_step(objective, optimizer, batch, normaliser)
    return torch.cat([p.grad.flatten() for p in objective.parameters()])


def test_each_step_divides_by_one_constant_so_a_heavy_row_keeps_its_share():
    torch.manual_seed(0)
    objective = TrainingObjective(build_model(ModelSpec("additive", D, K, 1, [4])))
    heavy, light = _batch(1, 500, seed=1), _batch(10, 1, seed=2)
    normaliser = 3 * (500 + 10) / 2  # slot impressions per step, two steps
    stepped = _gradient(objective, heavy, normaliser) + _gradient(objective, light, normaliser)

    both = SlateBatch(*[torch.cat([getattr(heavy, f), getattr(light, f)]) for f in
                        ("features", "positions", "context_ids", "clicks", "impressions")])
    loss, weight = _gradient(objective, both)
    (loss / weight * 2).backward()  # the whole log's mean loss per slot impression, over two steps
    whole = torch.cat([p.grad.flatten() for p in objective.parameters()])
    assert torch.allclose(stepped, whole, rtol=1e-4, atol=1e-7)


def test_ranks_draw_different_dropout_masks_and_each_rank_the_same_ones_again():
    def mask(rank):
        seed_process(7, rank)
        return torch.nn.functional.dropout(torch.ones(1000), 0.5, training=True)

    assert not torch.equal(mask(0), mask(1))
    assert torch.equal(mask(1), mask(1))


def test_a_heavy_row_is_split_into_pieces_with_the_same_likelihood(spark):
    from pyspark.sql import functions as F

    from ulr_spark.training.loaders import petastorm_columns

    examples = spark.createDataFrame(
        [(0, 10, [0.1, 0.2, 0.3, 0.4], [1, 2], [3, 1]), (0, 2, [0.5, 0.6, 0.0, 0.0], [1, 0], [1, 0])],
        f"{schema.CONTEXT_ID} int, {schema.IMPRESSIONS} long, {schema.FEATURES} array<float>, "
        f"{schema.POSITIONS} array<int>, {schema.CLICKS} array<int>",
    )
    pieces = petastorm_columns(examples, 2, heavy_row_cap=4).orderBy(F.desc(schema.IMPRESSIONS)).toPandas()
    assert len(pieces) == 3 + 1, "10 impressions in pieces of at most 4: three pieces; the light row stays whole"
    heavy = pieces[pieces[schema.IMPRESSIONS] > 3]
    assert heavy[schema.IMPRESSIONS].tolist() == pytest.approx([10 / 3] * 3)
    assert heavy[f"{schema.CLICKS_OF_ENTRY_PREFIX}0"].sum() == pytest.approx(3)
    assert pieces[schema.IMPRESSIONS].sum() == pytest.approx(12)

    logits = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    row = per_row_click_nll(logits, torch.tensor([[3.0, 1.0]]), torch.tensor([10.0]), torch.tensor([[1, 2]]))
    split = per_row_click_nll(
        logits.expand(3, 2), torch.tensor([[1.0, 1 / 3]] * 3, dtype=torch.float64),
        torch.full((3,), 10 / 3, dtype=torch.float64), torch.tensor([[1, 2]] * 3),
    )
    assert split.sum().item() == pytest.approx(row.item(), rel=1e-9)


def test_learning_rates_decay_to_zero_over_the_planned_steps():
    from ulr_spark.training.worker import Optimizers, TrainJob, learning_rate_factor

    assert learning_rate_factor("constant", 90, 100) == 1.0
    assert learning_rate_factor("linear", 25, 100) == pytest.approx(0.75)
    assert learning_rate_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert learning_rate_factor("cosine", 100, 100) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        learning_rate_factor("step", 1, 10)
    spec = ModelSpec(name="additive", num_features=D, max_slate_size=K, num_contexts=1, hidden_sizes=[4], categorical_buckets=[], embedding_dims=[])
    model = build_model(spec)
    job = TrainJob(spec=spec, epochs=2, steps_per_epoch=5, batch_size=4, learning_rate=0.01, weight_decay=0.0, seed=0,
                   use_gpu=False, cpu_threads=1, artifact_path="", card={}, learning_rate_schedule="linear")
    optimizers = Optimizers(model, [], job)
    batch = _batch(4, 2, 0)
    rates = []
    for _ in range(10):
        train_step(TrainingObjective(model), optimizers, batch, 1.0)
        rates.append(optimizers.optimizers[0].param_groups[0]["lr"])
    assert rates[0] == pytest.approx(0.009) and rates[-1] == pytest.approx(0.0)
