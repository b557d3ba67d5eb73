import math

import torch

from ulr_spark.models import (
    AdditiveTwoTower,
    ModelSpec,
    NaiveModel,
    examination_curve,
    weighted_click_loss,
)


def spec(name, contexts=1):
    return ModelSpec(name=name, num_features=3, max_slate_size=4, num_contexts=contexts, hidden_sizes=[8])


def test_additive_logit_is_relevance_plus_position_offset():
    torch.manual_seed(0)
    model = AdditiveTwoTower(spec("additive", contexts=2))
    with torch.no_grad():
        model.bias_tower.table.weight.copy_(torch.arange(10, dtype=torch.float32).unsqueeze(-1))
    features = torch.randn(2, 4, 3)
    positions = torch.tensor([[1, 2, 3, 4], [4, 3, 0, 0]])
    contexts = torch.tensor([0, 1])
    logits = model(features, positions, contexts)
    expected = model.relevance(features) + (contexts.unsqueeze(-1) * 5 + positions).float()
    assert torch.allclose(logits, expected)


def test_naive_model_ignores_position():
    torch.manual_seed(0)
    model = NaiveModel(spec("naive"))
    features = torch.randn(1, 4, 3)
    a = model(features, torch.tensor([[1, 2, 3, 4]]), torch.tensor([0]))
    b = model(features, torch.tensor([[4, 3, 2, 1]]), torch.tensor([0]))
    assert torch.equal(a, b)


def test_merged_row_loss_equals_sum_of_request_losses():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0]])
    positions = torch.tensor([[1, 2, 3, 0]])  # slot 4 is padding
    requests = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    merged_loss, merged_weight = weighted_click_loss(
        logits, requests.sum(0, keepdim=True), torch.tensor([3.0]), positions
    )
    single = [weighted_click_loss(logits, r.unsqueeze(0), torch.tensor([1.0]), positions) for r in requests]
    assert torch.allclose(merged_loss, sum(loss for loss, _ in single))
    assert merged_weight.item() == 9.0  # 3 requests x 3 real slots
    p = torch.sigmoid(logits[0, :3])
    by_hand = -(2 * torch.log(p[0]) + torch.log(1 - p[0]) + torch.log(p[1]) + 2 * torch.log(1 - p[1]) + 3 * torch.log(1 - p[2]))
    assert torch.allclose(merged_loss, by_hand)


def test_examination_curve_of_additive_model_with_flat_relevance():
    model = AdditiveTwoTower(spec("additive"))
    offsets = [0.0, 0.0, -1.0, -2.0, -3.0]  # padding, slots 1..4
    with torch.no_grad():
        for module in model.relevance_tower.mlp:
            if isinstance(module, torch.nn.Linear):
                module.weight.zero_()
                module.bias.zero_()
        model.bias_tower.table.weight.copy_(torch.tensor(offsets).unsqueeze(-1))
    curve = examination_curve(model, torch.randn(50, 3), context_id=0)
    sigma = lambda v: 1 / (1 + math.exp(-v))
    expected = [sigma(o) / sigma(0.0) for o in offsets[1:]]
    assert torch.allclose(curve, torch.tensor(expected), atol=1e-6)
