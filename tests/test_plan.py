from __future__ import annotations

import pytest
import torch

from lightning_shapley.criteria import criterion_by_name
from lightning_shapley.plan import make_plan

SCORES = {
    "a": torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0]),
    "b": torch.tensor([0.1, 0.2, 0.3, 0.4]),
}


def test_same_ratio_per_layer_removes_the_lowest():
    plan = make_plan(SCORES, 0.5)
    assert plan.removed == {"a": [1, 2, 3, 4], "b": [0, 1]}
    assert plan.achieved_ratio == 0.5 and plan.kept("b") == [2, 3]


def test_per_layer_ratios():
    plan = make_plan(SCORES, {"a": 0.25})
    assert plan.removed == {"a": [1, 2], "b": []}
    assert plan.requested_ratio == 0.25


def test_global_ranking_normalises_scales_unless_told_not_to():
    # normalised by the mean, b's small scores are comparable with a's
    assert make_plan(SCORES, 0.5, scope="global").removed == {"a": [1, 2, 3, 4], "b": [0, 1]}
    raw = make_plan(SCORES, 0.25, scope="global", normalize="none")
    assert raw.removed == {"a": [], "b": [0, 1, 2]}  # b would be emptied: it keeps one


def test_round_to_and_min_channels():
    assert make_plan(SCORES, 0.6, round_to=4).removed == {"a": [1, 2, 3, 4], "b": []}
    assert make_plan(SCORES, 0.9, min_channels=3).removed == {
        "a": [1, 2, 3, 4, 0],
        "b": [0],
    } or make_plan(SCORES, 0.9, min_channels=3).removed == {"a": [0, 1, 2, 3, 4], "b": [0]}
    never_empty = make_plan({"c": torch.tensor([1.0, 2.0])}, 0.99)
    assert never_empty.removed == {"c": [0]}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": 1.0}, r"ratio must be in \[0, 1\)"),
        ({"ratio": -0.1}, r"ratio must be in \[0, 1\)"),
        ({"ratio": {"a": 1.5}}, r"ratio\['a'\] must be in"),
        ({"ratio": {"zz": 0.5}}, "ratio names layers without scores: \\['zz'\\]"),
        ({"ratio": 0.5, "scope": "net"}, "scope='net' is invalid"),
        ({"ratio": 0.5, "scope": "global", "normalize": "l2"}, "normalize='l2' is invalid"),
        ({"ratio": 0.5, "min_channels": 0}, "min_channels"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
    ],
)
def test_bad_plans_name_the_problem(kwargs, match):
    ratio = kwargs.pop("ratio")
    with pytest.raises(ValueError, match=match):
        make_plan(SCORES, ratio, **kwargs)


def test_a_cost_budget_removes_channels_until_their_cost_reaches_the_share():
    scores = {"a": torch.tensor([0.1, 0.2, 3.0, 4.0]), "b": torch.tensor([0.15, 5.0])}
    cost = {"a": 1.0, "b": 10.0}  # total 4 + 20 = 24
    plan = make_plan(scores, 0.5, scope="global", normalize="none", cost=cost)
    # lowest first: a0 (1), b0 (10), a1 (1) → 12 ≥ 12
    assert plan.removed == {"a": [0, 1], "b": [0]}
    with pytest.raises(ValueError, match="scope='global'"):
        make_plan(scores, 0.5, cost=cost)
    with pytest.raises(ValueError, match="cost misses"):
        make_plan(scores, 0.5, scope="global", cost={"a": 1.0})


def test_a_layer_whose_channels_all_score_the_same_is_refused_not_cut_by_index():
    tied = {"a": torch.zeros(4), "b": torch.tensor([0.3, 0.1, 0.2])}
    for scope in ("layer", "global"):
        with pytest.raises(ValueError, match=r"all 4 channels of layer 'a' have the same score"):
            make_plan(tied, 0.5, scope=scope, normalize="none")
    assert make_plan(tied, {"b": 0.5}).removed == {"a": [], "b": [1]}  # 'a' loses nothing
    assert make_plan({"c": torch.tensor([2.0])}, 0.5).removed == {"c": []}
    noisy = torch.tensor([1.0, 1.0 + 1e-9, 1.0, 1.0])  # below float32's resolution
    with pytest.raises(ValueError, match="same score"):
        make_plan({"a": noisy}, 0.5)
    assert make_plan({"a": torch.tensor([1.0, 1.001, 1.0, 0.999])}, 0.5).removed == {"a": [0, 3]}


def test_a_dead_layer_is_refused_with_the_reason():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3),
    )  # fmt: skip
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    x = torch.randn(4, 1, 8, 8)
    scores = criterion_by_name("activation_mean").score(model, ["0", "2"], x).values
    with pytest.raises(ValueError, match=r"layer '2'.*the layer is dead \(all-zero weights"):
        make_plan(scores, 0.5)


def test_ratio_names_are_checked_with_close_matches_first():
    with pytest.raises(ValueError, match=r"\['aa'\]; scored: 'a', 'b'"):
        make_plan(SCORES, {"aa": 0.5})
