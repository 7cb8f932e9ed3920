"""The quantity head's ordinal count loss: its cut points are round(q)'s, each count's loss is
lowest inside that count's interval, it keeps pulling where SmoothL1 fades, and it trains."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from m3trt import metrics
from m3trt.cli import main
from m3trt.constants import QUANTITY_LOSSES
from m3trt.model.m3net import QuantityHead
from m3trt.train.count_loss import cut_points, ordinal_count_loss, quantity_loss


def _q(z: torch.Tensor, k_max: int) -> torch.Tensor:
    return 1.0 + (k_max - 1) * torch.sigmoid(z)


@pytest.mark.parametrize("k_max", [2, 3, 5, 8])
def test_cut_points_are_where_round_q_steps(k_max):
    theta = cut_points(k_max).double()
    assert len(theta) == k_max - 1 and bool((theta.diff() > 0).all())
    below = metrics.decode_quantity(_q(theta - 1e-4, k_max).numpy(), k_max)
    above = metrics.decode_quantity(_q(theta + 1e-4, k_max).numpy(), k_max)
    np.testing.assert_array_equal(below, np.arange(1, k_max))
    np.testing.assert_array_equal(above, np.arange(2, k_max + 1))


def test_each_count_loss_is_lowest_where_round_q_gives_that_count():
    k_max = 5
    z = torch.linspace(-6, 6, 1201)
    decoded = metrics.decode_quantity(_q(z, k_max).numpy(), k_max)
    for count in range(1, k_max + 1):
        losses = torch.stack(
            [ordinal_count_loss(v[None], torch.tensor([float(count)]), k_max) for v in z]
        )
        assert decoded[int(losses.argmin())] == count
    # counts outside 1..K_max are clamped, as the head's range is
    far = ordinal_count_loss(torch.tensor([6.0]), torch.tensor([9.0]), k_max)
    assert far == ordinal_count_loss(torch.tensor([6.0]), torch.tensor([5.0]), k_max)


def test_ordinal_gradient_does_not_fade_where_the_count_is_wrong():
    # an image with 1 label whose head reads ~5: SmoothL1's gradient through the sigmoid is
    # nearly gone, the ordinal loss still pulls z down hard
    k_max, counts = 5, torch.tensor([1.0])
    grads = {}
    for kind in QUANTITY_LOSSES:
        z = torch.tensor([5.0], requires_grad=True)
        quantity_loss(kind, z, _q(z, k_max), counts, k_max).backward()
        grads[kind] = float(z.grad)
    assert grads["ordinal"] > 1.0 > 0.1 > grads["smoothl1"] > 0


def test_ordinal_loss_trains_a_head_to_exact_counts():
    torch.manual_seed(0)
    k_max, n = 5, 512
    counts = torch.randint(1, k_max + 1, (n,)).float()
    features = torch.randn(n, 16) * 0.3
    features[:, 0] += counts  # the count is readable from the features, linearly
    head = QuantityHead(16, 32, 0.0, k_max)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        ordinal_count_loss(head.logit(features), counts, k_max).backward()
        optimizer.step()
    with torch.no_grad():
        k = metrics.decode_quantity(head(features).numpy(), k_max)
    assert np.mean(k == counts.numpy()) > 0.95


def test_unknown_loss_and_cli_choice():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown quantity loss 'l2'"):
        quantity_loss("l2", z, _q(z, 4), torch.ones(2), 4)
    result = CliRunner().invoke(main, ["train", "m.jsonl", "-o", "x", "--quantity-loss", "l2"])
    assert result.exit_code == 2 and "'l2' is not one of 'smoothl1', 'ordinal'" in result.output
