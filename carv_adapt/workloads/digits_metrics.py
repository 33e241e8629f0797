"""Quality metrics on digits: a Frechet distance in the feature space of a classifier trained on the real
digits (an FID analogue: the same formula, with the 10 logits of a logistic-regression digits classifier in
place of Inception features), and the classifier's accuracy on class-conditional samples."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

__all__ = ["DigitsFeatureNet", "frechet_distance"]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` between Gaussians fitted to two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # No ``disp=``: scipy 1.18 removed it; the plain call returns the root in every supported version.
    covmean = np.asarray(linalg.sqrtm(s_a @ s_b)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


@dataclass
class DigitsFeatureNet:
    """A classifier on real 32x32 digits; its logits are the features of the Frechet distance."""

    clf: object

    @classmethod
    def train(cls, seed: int = 0) -> DigitsFeatureNet:
        return _trained(seed)

    def features(self, images: Tensor) -> np.ndarray:
        """``n x 10`` logits of ``n x 1 x 32 x 32`` images in ``[-1, 1]``."""
        return self.clf.decision_function(images.detach().reshape(len(images), -1).cpu().numpy())

    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        pred = self.clf.predict(images.detach().reshape(len(images), -1).cpu().numpy())
        return float((torch.as_tensor(pred) == labels.cpu()).float().mean())

    def fd_to_real(self, images: Tensor) -> float:
        from carv_adapt.teachers.tiny import digits_dataset

        real, _ = digits_dataset()
        return frechet_distance(self.features(real), self.features(images))


@lru_cache(maxsize=4)
def _trained(seed: int) -> DigitsFeatureNet:
    from carv_adapt.teachers.tiny import train_digit_classifier

    return DigitsFeatureNet(train_digit_classifier(seed))
