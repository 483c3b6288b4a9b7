"""Fixture models for the PIT tests."""
from tests.models.dscnn import DSCNN
from tests.models.small import BNAfterAddModel, ConcatModel, MultiInputModel
from tests.models.tcn import ResidualTCN, tcn_irregular, tcn_regular
from tests.models.toy import ToyModel

__all__ = ["ToyModel", "ResidualTCN", "tcn_regular", "tcn_irregular", "DSCNN", "ConcatModel", "BNAfterAddModel",
           "MultiInputModel"]
