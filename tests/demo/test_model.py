"""The demo network: search space shape and fixed-choice variants."""
import pytest
import torch

from plinio.demo.model import (BLOCK_WIDTHS, BRANCH_KINDS, FIXED_KINDS, block_kinds,
                               branch_names, fixed_choice_cnn, make_branch, plain_cnn,
                               supernet_cnn)
from plinio.methods.pit_supernet import PITSuperNetModule


def test_supernet_blocks_offer_identity_only_where_width_is_kept():
    model = supernet_cnn()
    for name, (cin, cout) in BLOCK_WIDTHS.items():
        block = getattr(model, name)
        assert isinstance(block, PITSuperNetModule)
        assert len(block.sn_input_layers) == len(branch_names(name))
        assert ("identity" in branch_names(name)) == (cin == cout)
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 10)


@pytest.mark.parametrize("kind", BRANCH_KINDS)
def test_every_branch_keeps_the_spatial_shape(kind):
    branch = make_branch(kind, 8, 8).eval()
    assert branch(torch.randn(2, 8, 6, 6)).shape == (2, 8, 6, 6)


def test_plain_cnn_is_one_point_of_the_search_space():
    choices = {"block1": "identity", "block2": "dwsep3x3", "block3": "conv5x5"}
    model = plain_cnn(choices)
    assert not any(isinstance(m, PITSuperNetModule) for m in model.modules())
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_bad_branch_requests_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="unknown branch kind"):
        make_branch("conv7x7", 4, 4)
    with pytest.raises(ValueError, match="equal widths"):
        make_branch("identity", 4, 8)
    with pytest.raises(ValueError, match="block3"):
        plain_cnn({"block1": "conv3x3", "block2": "conv3x3"})
    assert "identity" not in block_kinds(4, 8)


def test_fixed_choices_are_the_kinds_every_block_offers():
    assert FIXED_KINDS == ("conv3x3", "conv5x5", "dwsep3x3")
    for kind in FIXED_KINDS:
        model = fixed_choice_cnn(kind)
        for block in BLOCK_WIDTHS:
            assert kind in branch_names(block)
            reference = make_branch(kind, *BLOCK_WIDTHS[block])
            assert repr(getattr(model, block)) == repr(reference)
    with pytest.raises(ValueError, match="'identity' is not available in every block"):
        fixed_choice_cnn("identity")
