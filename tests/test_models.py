import math

import torch

from ulr_spark.models.base import NaiveModel
from ulr_spark.models.curves import PageSample
from ulr_spark.models.losses import summed_click_nll
from ulr_spark.models.spec import ModelSpec
from ulr_spark.models.two_tower import AdditiveTwoTower


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
    merged_loss, merged_weight = summed_click_nll(
        logits, requests.sum(0, keepdim=True), torch.tensor([3.0]), positions
    )
    single = [summed_click_nll(logits, r.unsqueeze(0), torch.tensor([1.0]), positions) for r in requests]
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
    items = torch.randn(50, 1, 3)  # one-item pages
    pages = PageSample(items, torch.ones((50, 1), dtype=torch.long), torch.zeros(50, dtype=torch.long))
    curve = model.examination_curve(pages, context_id=0)

    def sigma(v):
        return 1 / (1 + math.exp(-v))

    expected = [sigma(o) / sigma(0.0) for o in offsets[1:]]
    assert torch.allclose(curve, torch.tensor(expected, dtype=torch.float64), atol=1e-6)


# --- the model family ----------------------------------------------------------------------

from ulr_spark.models.mixem import MixEMTwoTower  # noqa: E402
from ulr_spark.models.registry import build_model  # noqa: E402
from ulr_spark.models.two_tower import DotProductTwoTower, PALModel  # noqa: E402
from ulr_spark.models.xpa import XPATwoTower  # noqa: E402


def family_spec(name, **options):
    return ModelSpec(name=name, num_features=3, max_slate_size=4, num_contexts=2, hidden_sizes=[8], **options)


def slate_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(5, 4, 3, generator=g)
    positions = torch.tensor([[1, 2, 3, 4]] * 4 + [[1, 2, 0, 0]])
    contexts = torch.tensor([0, 1, 0, 1, 0])
    clicks = torch.randint(0, 3, (5, 4), generator=g).float()
    impressions = torch.full((5,), 3.0)
    return features, positions, contexts, clicks, impressions


def test_mixem_with_one_component_equals_additive():
    torch.manual_seed(0)
    mixem = MixEMTwoTower(family_spec("mixem", mixem_components=1))
    additive = AdditiveTwoTower(family_spec("additive"))
    additive.relevance_tower.load_state_dict(mixem.relevance_tower.state_dict())
    with torch.no_grad():
        offsets = torch.randn_like(additive.bias_tower.table.weight)
        additive.bias_tower.table.weight.copy_(offsets)
        mixem.bias_tower.table.weight.copy_(offsets)
    batch = slate_batch()
    assert torch.allclose(mixem(*batch[:3]), additive(*batch[:3]), atol=1e-5)
    mixem_loss, mixem_weight = mixem.loss(*batch)
    additive_loss, additive_weight = additive.loss(*batch)
    assert torch.allclose(mixem_loss, additive_loss, atol=1e-4)
    assert mixem_weight == additive_weight


def test_mixem_posterior_prefers_the_component_that_explains_the_list():
    torch.manual_seed(0)
    mixem = MixEMTwoTower(family_spec("mixem", mixem_components=2))
    with torch.no_grad():
        for module in mixem.relevance_tower.mlp:
            if isinstance(module, torch.nn.Linear):
                module.weight.zero_()
                module.bias.zero_()
        # Component 0 clicks slot 1 a lot, component 1 hardly ever clicks.
        table = torch.full_like(mixem.bias_tower.table.weight, -4.0)
        table[1, 0] = 3.0
        mixem.bias_tower.table.weight.copy_(table)
    features = torch.zeros(2, 4, 3)
    positions = torch.tensor([[1, 2, 3, 4]] * 2)
    clicks = torch.tensor([[1.0, 0, 0, 0], [0.0, 0, 0, 0]])
    relevance, bias = mixem.towers(features, positions, torch.zeros(2, dtype=torch.long))
    nll = mixem.component_nll(mixem.combine(relevance, bias), clicks, torch.ones(2), positions)
    posterior = torch.softmax(-nll, -1)
    assert posterior[0, 0] > 0.9 and posterior[1, 1] > 0.9


def test_dot_product_with_one_dimension_and_fixed_bias_is_a_scaled_product():
    torch.manual_seed(0)
    model = DotProductTwoTower(family_spec("dot_product", dot_product_dim=1))
    scale = torch.tensor([0.0, 2.0, 1.0, 0.5, 0.25] * 2).unsqueeze(-1)  # (context, slot) -> b
    with torch.no_grad():
        model.bias_tower.table.weight.copy_(scale)
    features, positions, contexts, _, _ = slate_batch()
    r = model.relevance_tower(features).squeeze(-1)
    b = scale.squeeze(-1)[contexts.unsqueeze(-1) * 5 + positions]
    assert torch.allclose(model(features, positions, contexts), r * b, atol=1e-6)
    # Serving: the logit in slot 1 of context 0, i.e. r scaled by b(1).
    assert torch.allclose(model.relevance(features), 2.0 * r, atol=1e-6)


def test_pal_click_probability_is_a_product_of_probabilities():
    torch.manual_seed(0)
    model = PALModel(family_spec("pal"))
    with torch.no_grad():
        model.bias_tower.table.weight.copy_(torch.linspace(-2, 2, 10).unsqueeze(-1))
    features, positions, contexts, _, _ = slate_batch()
    p = torch.sigmoid(model(features, positions, contexts))
    expected = torch.sigmoid(model.relevance(features)) * torch.sigmoid(model.bias_tower(positions, contexts))
    assert torch.allclose(p, expected, atol=1e-5)


def _randomise(model):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return model


def test_xpa_bias_of_a_slot_depends_on_the_other_items_not_its_own():
    torch.manual_seed(0)
    model = _randomise(XPATwoTower(family_spec("xpa"))).eval()
    features, positions, contexts, _, _ = slate_batch()
    relevance, bias = model.towers(features, positions, contexts)
    changed = features.clone()
    changed[:, 1] += 3.0  # a new item in slot 2
    _, bias_changed = model.towers(changed, positions, contexts)
    assert torch.allclose(bias[:, 1], bias_changed[:, 1], atol=1e-5), "own item must not move its own bias"
    assert not torch.allclose(bias[:4, 0], bias_changed[:4, 0], atol=1e-3), "a neighbour must move the bias"
    assert torch.isfinite(bias).all()
    # A page with a single item has no one to attend to; its bias is the plain slot offset.
    lone = model.towers(features[:1, :1], positions[:1, :1], contexts[:1])[1]
    assert torch.isfinite(lone).all()


def test_xpa_on_a_grid_tells_left_from_above():
    torch.manual_seed(0)
    model = _randomise(XPATwoTower(ModelSpec("xpa", 3, 4, 1, [8], grid_columns=2))).eval()
    tower = model.bias_tower
    # Slots 1 2 / 3 4: slot 2 is right of slot 1, slot 3 is below it.
    embeddings = tower.slot_embeddings(torch.tensor([[1, 2, 3, 4]]))[0]
    assert torch.allclose(embeddings[0] - embeddings[1], embeddings[2] - embeddings[3], atol=1e-6)
    assert torch.allclose(embeddings[0] - embeddings[2], embeddings[1] - embeddings[3], atol=1e-6)
    assert not torch.allclose(embeddings[1], embeddings[2])


def test_xpa_curve_averages_over_pages_and_is_one_at_slot_one():
    torch.manual_seed(0)
    model = XPATwoTower(family_spec("xpa"))
    features, positions, contexts, _, _ = slate_batch()
    curve = model.examination_curve(PageSample(features, positions, contexts), context_id=0)
    assert curve.shape == (4,)
    assert abs(curve[0].item() - 1.0) < 1e-5


def test_bias_dropout_only_while_training_and_never_rescales_the_kept_offsets():
    torch.manual_seed(0)
    model = AdditiveTwoTower(family_spec("additive", bias_dropout=0.5))
    with torch.no_grad():
        model.bias_tower.table.weight.fill_(1.0)
    features, positions, contexts, _, _ = slate_batch()
    model.eval()
    assert torch.allclose(model(features, positions, contexts) - model.relevance(features), torch.ones(5, 4))
    model.train()
    offsets = model(features, positions, contexts) - model.relevance(features)
    dropped = offsets.abs() < 1e-6
    # nn.Dropout would have scaled the kept offsets to 1 / (1 - 0.5) = 2.
    assert dropped.any() and (~dropped).any() and torch.allclose(offsets[~dropped], torch.ones(int((~dropped).sum())))


def test_a_dropped_bias_leaves_each_model_its_serving_score():
    """What "dropped" means per model: the click logit becomes the serving score (a_m r(x) per
    MixEM component; the blind component is never dropped)."""
    features, positions, contexts, _, _ = slate_batch()
    for architecture in ("additive", "pal", "dot_product", "xpa", "mixem"):
        torch.manual_seed(0)
        model = build_model(family_spec(architecture, bias_dropout=0.999999, mixem_blind_component=True))
        if architecture == "dot_product":
            with torch.no_grad():
                model.bias_tower.table.weight.normal_()
            model.set_cell_impressions({(0, 1): 3, (0, 3): 1, (1, 2): 4})
        model.train()
        relevance, bias = model.towers(features, positions, contexts)
        logits = model.combine(relevance, model.drop_bias(bias, positions))
        if architecture == "mixem":
            assert torch.allclose(logits[..., 0], model.gains()[0] * relevance, atol=1e-5)
            assert torch.allclose(logits[..., 1], bias[..., 1])  # the blind component keeps its bias
            continue
        expected = model.relevance(features)
        if architecture == "dot_product":  # o_bar of the current table, not slot 1
            o_bar = (3 * model.bias_tower.table.weight[1] + model.bias_tower.table.weight[3] + 4 * model.bias_tower.table.weight[5 + 2]) / 8
            expected = model.relevance_tower(features) @ o_bar
        if architecture == "pal":  # P(click) = sigma(r) * 1
            expected = torch.logit(torch.sigmoid(expected))
        assert torch.allclose(logits, expected, atol=1e-4), architecture
        if architecture == "dot_product":  # dropped items send no gradient into the bias table
            logits.sum().backward()
            assert model.bias_tower.table.weight.grad is None or not model.bias_tower.table.weight.grad.any()


def test_mixem_loss_of_rows_merged_on_clicks_is_the_sum_of_per_request_losses():
    """Merging requests that clicked alike keeps MixEM's EM objective exactly (build-examples
    merges on the click vector when a MixEM is configured)."""
    torch.manual_seed(0)
    model = MixEMTwoTower(family_spec("mixem", mixem_components=2, mixem_blind_component=True))
    features, positions, contexts, _, _ = slate_batch()
    pattern = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]])
    merged, _ = model.loss(features, positions, contexts, 3 * pattern, torch.full((5,), 3.0))
    single, _ = model.loss(features, positions, contexts, pattern, torch.ones(5))
    assert torch.allclose(merged, 3 * single, atol=1e-4)
    # Requests that clicked differently do not share a posterior: merging them changes the objective.
    mixed, _ = model.loss(features, positions, contexts, pattern + pattern.roll(1, 0), torch.full((5,), 2.0))
    apart = model.loss(features, positions, contexts, pattern, torch.ones(5))[0] + model.loss(
        features, positions, contexts, pattern.roll(1, 0), torch.ones(5))[0]
    assert not torch.allclose(mixed, apart, atol=1e-3)


def test_models_saved_before_the_serving_direction_and_the_new_adversary_still_load():
    from ulr_spark.io.artifacts import upgrade_state_dict

    torch.manual_seed(0)
    model = DotProductTwoTower(family_spec("dot_product", gradient_reversal=1.0))
    old = {k: v for k, v in model.state_dict().items() if "serving_direction" not in k and not k.startswith("adversary.")}
    old["adversary.weight"], old["adversary.bias"] = torch.zeros(3, 3), torch.zeros(3)  # the old one-layer adversary
    restored = DotProductTwoTower(family_spec("dot_product", gradient_reversal=1.0))
    restored.load_state_dict(upgrade_state_dict(restored, old))
    features = torch.randn(6, 3)
    slot1 = model.relevance_tower(features) @ model.bias_tower.table.weight[1]
    assert torch.allclose(restored.relevance(features), slot1, atol=1e-6)  # served as it was trained: slot 1
    mixem = MixEMTwoTower(family_spec("mixem", mixem_blind_component=True))
    assert "gain_mask" not in mixem.state_dict()  # follows from the spec; not saved


def test_bias_tables_start_at_a_decreasing_curve():
    features, positions, contexts, _, _ = slate_batch()
    slots = torch.arange(1, 5)
    additive = AdditiveTwoTower(family_spec("additive"))
    assert torch.allclose(additive.bias_tower(slots.unsqueeze(0), torch.tensor([1]))[0], -torch.log(slots.float()))
    pal = build_model(family_spec("pal"))
    examination = torch.sigmoid(pal.bias_tower(slots.unsqueeze(0), torch.tensor([0]))[0])
    assert torch.allclose(examination, 0.5 / slots.float(), atol=1e-6)
    flat = AdditiveTwoTower(family_spec("additive", bias_init="zero"))
    assert torch.count_nonzero(flat.bias_tower.table.weight) == 0
    xpa = build_model(family_spec("xpa"))
    assert torch.allclose(xpa.bias_tower.base(slots.unsqueeze(0), torch.tensor([0]))[0], -torch.log(slots.float()))
    mixem = MixEMTwoTower(family_spec("mixem", mixem_components=2, mixem_blind_component=True))
    start = mixem.bias_tower(slots.unsqueeze(0), torch.tensor([0]))[0]  # [4, 2]
    assert (start[1:] < start[:-1]).all()  # both components decrease
    assert torch.allclose(start[:, 1], -2 * torch.log(slots.float()))  # the blind one twice as steep


def test_mixem_blind_component_ignores_relevance():
    torch.manual_seed(0)
    mixem = MixEMTwoTower(family_spec("mixem", mixem_components=2, mixem_blind_component=True))
    features, positions, contexts, _, _ = slate_batch()
    relevance, bias = mixem.towers(features, positions, contexts)
    logits = mixem.combine(relevance, bias)
    assert torch.allclose(logits[..., 1], bias[..., 1])  # gain 0: the items do not matter
    assert not torch.allclose(logits[..., 0], bias[..., 0])
    assert float(mixem.gains()[1]) == 0 and abs(float(mixem.component_shares().detach().sum()) - 1) < 1e-6


def test_gradient_reversal_flips_the_adversary_gradient_into_the_bias_tower_only():
    torch.manual_seed(0)
    model = AdditiveTwoTower(family_spec("additive", gradient_reversal=0.5))
    features, positions, contexts, clicks, impressions = slate_batch()
    relevance, bias = model.towers(features, positions, contexts)
    model.adversary_loss(relevance, bias, impressions, positions).backward()
    reversed_grad = model.bias_tower.table.weight.grad.clone()
    assert all(p.grad is None or not p.grad.any() for p in model.relevance_tower.parameters())
    adversary_grad = model.adversary[0].weight.grad.clone()

    model.zero_grad()
    relevance, bias = model.towers(features, positions, contexts)
    real = positions > 0
    target = relevance.detach()
    target = (target - target[real].mean()) / target[real].std(unbiased=False)
    guess = model.adversary(bias.unsqueeze(-1)).squeeze(-1)
    squared = (guess - target) ** 2
    plain = (squared / (1 + squared) * impressions.unsqueeze(-1) * real).sum()
    assert float(plain) <= float(impressions.unsqueeze(-1).expand_as(positions)[real].sum())  # bounded: rho < 1
    plain.backward()
    assert torch.allclose(reversed_grad, -0.5 * model.bias_tower.table.weight.grad, atol=1e-6)
    assert torch.allclose(adversary_grad, model.adversary[0].weight.grad, atol=1e-6)  # the adversary itself learns


def test_dot_product_serving_score_is_its_impression_weighted_mean_click_logit():
    torch.manual_seed(0)
    model = DotProductTwoTower(family_spec("dot_product", dot_product_dim=3))
    with torch.no_grad():
        model.bias_tower.table.weight.normal_()
    cells = {(0, 1): 50, (0, 2): 30, (0, 4): 5, (1, 1): 15}
    model.set_serving_direction(cells)
    features = torch.randn(40, 3)
    logit = {}
    for context, slot in cells:
        logit[(context, slot)] = model(features.unsqueeze(0), torch.full((1, 40), slot), torch.tensor([context]))[0]
    mean_logit = sum(n * logit[c] for c, n in cells.items()) / sum(cells.values())
    score = model.relevance(features)
    assert torch.allclose(score, mean_logit, atol=1e-5)
    # The items the model itself would click most on average come first; slot 1 alone ranks otherwise.
    assert torch.equal(torch.argsort(score), torch.argsort(mean_logit))
    assert not torch.equal(torch.argsort(score), torch.argsort(logit[(0, 1)]))
    restored = DotProductTwoTower(family_spec("dot_product", dot_product_dim=3))
    restored.load_state_dict(model.state_dict())
    assert torch.allclose(restored.relevance(features), score)


def test_xpa_penalises_what_attention_adds():
    torch.manual_seed(0)
    batch = slate_batch()
    plain = build_model(family_spec("xpa", attention_offset_penalty=0.0, attention_dropout=0.0))
    penalised = build_model(family_spec("xpa", attention_offset_penalty=2.0, attention_dropout=0.0))
    penalised.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for model in (plain, penalised):
            model.bias_tower.out[-1].bias.fill_(0.5)  # attention adds 0.5 to every slot
    gap = penalised.loss(*batch)[0] - plain.loss(*batch)[0]
    slot_impressions = float((batch[4].unsqueeze(-1) * (batch[1] > 0)).sum())
    assert abs(float(gap) - 2.0 * 0.25 * slot_impressions) < 1e-3


def test_every_architecture_trains_a_step_and_serves_one_score_per_item():
    for architecture in ("naive", "additive", "pal", "dot_product", "mixem", "xpa"):
        torch.manual_seed(0)
        model = build_model(family_spec(architecture, bias_dropout=0.1, gradient_reversal=0.1))
        batch = slate_batch()
        loss, weight = model.loss(*batch)
        loss.backward()
        assert torch.isfinite(loss) and weight.item() == 3 * (4 * 4 + 2)
        assert model.relevance(batch[0]).shape == (5, 4), architecture
