"""PIT layers, maskers and binarizer."""
from plinio.methods.pit.nn.batchnorm_1d import PITBatchNorm1d
from plinio.methods.pit.nn.batchnorm_2d import PITBatchNorm2d
from plinio.methods.pit.nn.binarizer import PITBinarizer
from plinio.methods.pit.nn.conv1d import PITConv1d
from plinio.methods.pit.nn.conv2d import PITConv2d
from plinio.methods.pit.nn.dilation_masker import PITDilationMasker, PITFrozenDilationMasker
from plinio.methods.pit.nn.features_masker import PITFeaturesMasker, PITFrozenFeaturesMasker
from plinio.methods.pit.nn.linear import PITLinear
from plinio.methods.pit.nn.module import PITModule
from plinio.methods.pit.nn.timestep_masker import PITFrozenTimestepMasker, PITTimestepMasker

__all__ = ["PITModule", "PITConv1d", "PITConv2d", "PITLinear", "PITBatchNorm1d", "PITBatchNorm2d",
           "PITFeaturesMasker", "PITFrozenFeaturesMasker", "PITTimestepMasker", "PITFrozenTimestepMasker",
           "PITDilationMasker", "PITFrozenDilationMasker", "PITBinarizer"]
