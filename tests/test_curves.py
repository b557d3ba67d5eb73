"""One examination-curve definition for every model: impression-weighted, indexed by slot (not
by array entry), over the pages of the context, relative to slot 1 of the reference context;
and curves are written only for the (context, slot) cells the log shows."""

import pandas as pd
import pytest
import torch

from ulr_spark import schema
from ulr_spark.io.artifacts import read_artifact, save_artifact
from ulr_spark.models.curves import PageSample
from ulr_spark.models.spec import ModelSpec
from ulr_spark.models.two_tower import AdditiveTwoTower, PALModel
from ulr_spark.models.xpa import XPATwoTower
from ulr_spark.training.driver import ExamplesShape
from ulr_spark.training.samples import learned_bias_curves

K, D = 4, 3
# Offsets b[c, p] of the slot table: padding, then slots 1..4, for contexts 0 and 1.
OFFSETS = [[0.0, 0.5, -0.5, -1.5, -2.5], [0.0, -0.2, -1.0, -2.0, -3.0]]


def _spec(architecture):
    return ModelSpec(name=architecture, num_features=D, max_slate_size=K, num_contexts=2, hidden_sizes=[8])


def _additive_and_xpa():
    """An additive model and an XPA model with the same relevance tower and slot table, and
    XPA's attention output at zero (its initial value): the two models are the same function."""
    torch.manual_seed(0)
    additive = AdditiveTwoTower(_spec("additive"))
    xpa = XPATwoTower(_spec("xpa"))
    with torch.no_grad():
        additive.bias_tower.table.weight.copy_(torch.tensor(OFFSETS).reshape(-1, 1))
        xpa.bias_tower.base.table.weight.copy_(torch.tensor(OFFSETS).reshape(-1, 1))
    xpa.relevance_tower.load_state_dict(additive.relevance_tower.state_dict())
    return additive.eval(), xpa.eval()


def _pages():
    """Context 0: full pages; context 1: pages with a gap (slot 1 filtered out, slots 2..4 in
    entries 0..2) and different items; unequal impressions."""
    g = torch.Generator().manual_seed(3)
    features = torch.randn(6, K, D, generator=g)
    features[3:] += 1.5
    positions = torch.tensor([[1, 2, 3, 4]] * 3 + [[2, 3, 4, 0]] * 3)
    contexts = torch.tensor([0, 0, 0, 1, 1, 1])
    weights = torch.tensor([1.0, 10.0, 2.0, 5.0, 1.0, 30.0], dtype=torch.float64)
    return PageSample(features, positions, contexts, weights)


def _by_hand(model, pages, context_id, reference=0):
    """The definition, written out: sum_n w_n sum_j sigma(r_nj + b[c, k]) over pages of c,
    divided by the same with slot 1 of the reference context."""
    own = pages.in_context(context_id)
    with torch.no_grad():
        r = model.relevance(own.features).double()
    real = (own.positions > 0).double()
    w = own.page_weights().unsqueeze(-1) * real
    offsets = torch.tensor(OFFSETS, dtype=torch.float64)

    def clicks(c, k):
        return (w * torch.sigmoid(r + offsets[c, k])).sum()

    return torch.stack([clicks(context_id, k) for k in range(1, K + 1)]) / clicks(reference, 1)


@pytest.mark.parametrize("context_id", [0, 1])
def test_additive_and_xpa_curves_follow_one_definition(context_id):
    additive, xpa = _additive_and_xpa()
    pages = _pages()
    expected = _by_hand(additive, pages, context_id)
    assert torch.allclose(additive.examination_curve(pages, context_id), expected, atol=1e-9)
    # XPA's curve is indexed by slot: on pages with a gap, entry 0 holds slot 2.
    assert torch.allclose(xpa.examination_curve(pages, context_id), expected, atol=1e-6)


def test_the_curve_weighs_pages_by_their_impressions():
    additive, _ = _additive_and_xpa()
    pages = _pages()
    unweighted = PageSample(pages.features, pages.positions, pages.context_ids)
    # Pages of one context show different items, so their weights matter.
    assert not torch.allclose(additive.examination_curve(pages, 1), additive.examination_curve(unweighted, 1), atol=1e-4)


def test_pal_curve_is_the_ratio_of_examination_probabilities():
    torch.manual_seed(0)
    pal = PALModel(_spec("pal")).eval()
    with torch.no_grad():
        pal.bias_tower.table.weight.copy_(torch.tensor(OFFSETS).reshape(-1, 1))
    curve = pal.examination_curve(_pages(), 1)
    theta = torch.sigmoid(torch.tensor(OFFSETS, dtype=torch.float64))
    assert torch.allclose(curve, theta[1, 1:] / theta[0, 1], atol=1e-6)


def test_curves_are_written_only_for_slots_the_log_shows(tmp_path):
    additive, _ = _additive_and_xpa()
    save_artifact(str(tmp_path / "additive"), additive, {"contexts": {"0": "default", "1": "device=mobile"}})
    shape = ExamplesShape(
        rows=6, num_features=D, max_slate_size=K, contexts={0: "default", 1: "device=mobile"},
        impressions=49, slot_impressions=160, observed_slots={0: [1, 2, 3, 4], 1: [2, 3, 4]},
    )
    rows = learned_bias_curves(read_artifact(str(tmp_path / "additive")), _pages(), shape, "r1")
    cells = sorted(zip(rows[schema.CONTEXT_KEY], rows[schema.POSITION]))
    assert cells == [("default", 1), ("default", 2), ("default", 3), ("default", 4),
                     ("device=mobile", 2), ("device=mobile", 3), ("device=mobile", 4)]
    mobile = rows[rows[schema.CONTEXT_KEY] == "device=mobile"].set_index(schema.POSITION)[schema.EXAMINATION]
    expected = _by_hand(additive, _pages(), 1).numpy()
    assert mobile.to_dict() == pytest.approx({2: expected[1], 3: expected[2], 4: expected[3]})
    assert isinstance(rows, pd.DataFrame)
