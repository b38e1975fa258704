"""a2m_lib.losses: masked losses."""

import pytest
import torch

from a2m_lib.losses import masked_l1


def test_masked_l1_ignores_padding():
    prediction, target = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    target[1, 2:] = 100.0
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    assert masked_l1(prediction, target, mask).item() == pytest.approx(1.0)
