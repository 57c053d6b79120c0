from __future__ import annotations

import pytest
import torch

import headkit as hk
from headkit import Heads


def test_every_form_gives_the_same_set():
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[5, 1] = mask[9, 9] = True
    forms = [
        Heads.parse("L5H1 L9H9"),
        Heads("l9h9,L5H1"),
        Heads([(9, 9), (5, 1), (5, 1)]),
        Heads({5: [1], 9: 9}),
        Heads(mask),
        Heads.from_mask(mask),
        Heads(Heads.parse("L5H1 L9H9")),
    ]
    assert all(f == forms[0] for f in forms)
    assert forms[0].pairs == ((5, 1), (9, 9))
    assert len(forms[0]) == 2 and (9, 9) in forms[0] and (9, 8) not in forms[0]


def test_to_mask_round_trip():
    heads = Heads.parse("L0H3 L2H0 L2H1")
    mask = heads.mask(3, 4)
    assert mask.dtype == torch.bool and mask.shape == (3, 4)
    assert mask.nonzero().tolist() == [[0, 3], [2, 0], [2, 1]]
    assert Heads(mask) == heads


def test_views_and_set_operations():
    heads = Heads.parse("L1H0 L1H3 L4H2")
    assert heads.layers == (1, 4)
    assert heads.in_layer(1) == (0, 3) and heads.in_layer(2) == ()
    assert heads | "L0H0" == Heads.parse("L0H0 L1H0 L1H3 L4H2")
    assert heads - "L1H3" == Heads.parse("L1H0 L4H2")
    assert len(Heads.all(3, 4)) == 12
    assert str(heads) == "L1H0 L1H3 L4H2" and repr(heads) == "Heads('L1H0 L1H3 L4H2')"
    assert len(repr(Heads.all(30, 30))) < 120  # long sets stay short: reprs become hook names


@pytest.mark.parametrize(
    "bad, match",
    [
        ("L5X1", r"could not read 'L5X1'.*L<layer>H<head>"),
        ("L5H", r"could not read 'L5H'"),
        ("5.1", r"could not read '5.1'"),
        ([(1, -2)], r"non-negative"),
        ([(1, 2, 3)], r"\(layer, head\) pairs"),
        ([("1", 2)], r"\(layer, head\) pairs"),
        (3.5, r"got a float"),
        (torch.ones(2, 2), r"got f32\[2, 2\]; expected a bool tensor of shape \[n_layers, n_heads\]"),
        (torch.ones(2, dtype=torch.bool), r"bool tensor of shape \[n_layers, n_heads\]"),
    ],
)
def test_malformed_heads_raise(bad, match):
    with pytest.raises(hk.HeadkitError, match=match):
        Heads(bad)


def test_validate_names_the_head_the_limit_and_a_fix():
    with pytest.raises(hk.HeadkitError, match=r"L12H1.*12 layers.*layer indices 0\.\.11.*Fix: drop L12H1") as e:
        Heads.parse("L12H1").validate(12, 4)
    assert isinstance(e.value, ValueError)
    with pytest.raises(hk.HeadkitError, match=r"L0H9.*4 query heads per layer.*1 key/value heads.*query heads"):
        Heads.parse("L0H9").validate(18, 4, n_kv_heads=1)
    Heads.parse("L11H3").validate(12, 4)  # in range: no error
