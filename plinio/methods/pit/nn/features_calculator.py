"""Input-features calculators: how many (and which) input channels a PIT layer sees.

The graph analysis gives each PIT layer a calculator describing its producer: a constant
width (network input, frozen path), one channel masker, a channel concatenation, or a
flatten of one of those. Calculators are modules only so that ``.to()`` moves them; the
maskers they read belong to the producing layers and are referenced, not registered.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from plinio.methods.pit.nn.binarizer import PITBinarizer
from plinio.methods.pit.nn.features_masker import PITFeaturesMasker

LinearTerms = Tuple[List[Tuple[PITFeaturesMasker, float]], float]


class FeaturesCalculator(nn.Module):
    """Base class. ``features`` is continuous, ``features_mask`` is the binarized per-channel mask."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_ref", torch.zeros(()), persistent=False)

    @property
    def size(self) -> int:
        """Static number of input channels."""
        raise NotImplementedError

    @property
    def features(self) -> torch.Tensor:
        """Continuous effective number of input channels (0-dim, differentiable)."""
        raise NotImplementedError

    @property
    def features_mask(self) -> torch.Tensor:
        """Binarized mask over the input channels (straight-through gradient)."""
        raise NotImplementedError

    @property
    def features_binarized(self) -> torch.Tensor:
        """Number of kept input channels (0-dim, straight-through gradient)."""
        return self.features_mask.sum()

    def linear_terms(self) -> LinearTerms:
        """``features`` = Σ coef · Σθ(masker) + const: the form the vectorized cost model uses."""
        raise NotImplementedError


class ConstFeaturesCalculator(FeaturesCalculator):
    """A fixed number of channels (network input or a path whose width cannot change)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = int(n)

    @property
    def size(self) -> int:
        return self.n

    @property
    def features(self) -> torch.Tensor:
        return torch.full((), float(self.n), dtype=self._ref.dtype, device=self._ref.device)

    @property
    def features_mask(self) -> torch.Tensor:
        return torch.ones(self.n, dtype=self._ref.dtype, device=self._ref.device)

    def linear_terms(self) -> LinearTerms:
        return [], float(self.n)

    def extra_repr(self) -> str:
        return f"n={self.n}"


class MaskerFeaturesCalculator(FeaturesCalculator):
    """The output channels of the layer(s) owning ``masker``."""

    def __init__(self, masker: PITFeaturesMasker, threshold: float = 0.5) -> None:
        super().__init__()
        self._masker = (masker,)
        self.threshold = float(threshold)

    @property
    def masker(self) -> PITFeaturesMasker:
        """The channel masker read (not owned)."""
        return self._masker[0]

    @property
    def size(self) -> int:
        return self.masker.out_channels

    @property
    def features(self) -> torch.Tensor:
        return self.masker.theta.sum()

    @property
    def features_mask(self) -> torch.Tensor:
        return PITBinarizer.apply(self.masker.theta, self.threshold)

    def linear_terms(self) -> LinearTerms:
        return [(self.masker, 1.0)], 0.0


class ConcatFeaturesCalculator(FeaturesCalculator):
    """Channel concatenation of several producers."""

    def __init__(self, parts: Sequence[FeaturesCalculator]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def features(self) -> torch.Tensor:
        return torch.stack([p.features for p in self.parts]).sum()

    @property
    def features_mask(self) -> torch.Tensor:
        return torch.cat([p.features_mask for p in self.parts])

    def linear_terms(self) -> LinearTerms:
        terms: List[Tuple[PITFeaturesMasker, float]] = []
        const = 0.0
        for p in self.parts:
            t, c = p.linear_terms()
            terms += t
            const += c
        return terms, const


class FlattenFeaturesCalculator(FeaturesCalculator):
    """Flatten from dim 1: each input channel becomes ``factor`` consecutive features."""

    def __init__(self, inner: FeaturesCalculator, factor: int) -> None:
        super().__init__()
        self.inner = inner
        self.factor = int(factor)

    @property
    def size(self) -> int:
        return self.inner.size * self.factor

    @property
    def features(self) -> torch.Tensor:
        return self.inner.features * self.factor

    @property
    def features_mask(self) -> torch.Tensor:
        return torch.repeat_interleave(self.inner.features_mask, self.factor)

    def linear_terms(self) -> LinearTerms:
        t, c = self.inner.linear_terms()
        return [(m, k * self.factor) for m, k in t], c * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
