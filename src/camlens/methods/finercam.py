"""Finer-CAM: a CAM of the difference between a class and the classes it is most easily
confused with."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..targets import ClassScore, ContrastScore, Target
from .base import CAMMethod, SiteData, eigen_smooth_flag, get_method, register

#: the layer methods Finer-CAM may run on the contrast score (the ones its reference supports)
BASES = ("gradcam", "gradcam++", "layercam")


@register
class FinerCAM(CAMMethod):
    """Finer-CAM: Grad-CAM (or ``base``) of a contrast score instead of the class score.

    Zhang et al., "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual
    Explanation", CVPR 2025.

    Score ``S[n] = z[n, c] - gamma * (1/T) sum_t z[n, d_t]``, with ``z`` the logits, ``c`` the
    explained class and ``d_1..d_T`` the ``T = min(references, K - 1)`` other classes whose
    logits are nearest ``z[n, c]`` (:class:`camlens.targets.ContrastScore`); the map is
    ``base``'s of that score: for Grad-CAM ``relu(sum_c mean_ij(dS/dA) A)``. Since the score is
    linear in the logits, the references' gradients are subtracted before the final ReLU, so
    what the similar classes share cancels and what sets ``c`` apart stays.

    ``gamma``: 0.6 by default, as torchcam 0.5.0; ``gamma=0`` is the base method of the logit.
    ``references``: 3 by default, as torchcam. ``base``: "gradcam" (default), "gradcam++" or
    "layercam". ``eigen_smooth``: the base method's (projection of its weighted activations on
    their first principal component instead of their sum).

    Differences from torchcam's ``FinerCAM``: the scores are the logits always (a final softmax
    or sigmoid is skipped, as with ``camlens.targets.Logit``): the paper compares logits, and
    torchcam compares whatever the model returns, which is the same for the usual model
    without a softmax. The reference classes cannot be given by hand here (torchcam's
    ``comparison_idx``); pass a ``ContrastScore`` subclass as the target for that. Ties between
    equally near classes go to the lower index (torchcam's ``topk`` leaves their order open).

    Example (the classes compared with class 0: the two whose logits are nearest 2.0)::

        >>> import numpy as np
        >>> from camlens.targets import ContrastScore
        >>> z = np.array([[2.0, 1.5, -3.0, 1.0]])
        >>> ContrastScore(0, references=2).reference_classes(z, np.array([0])).tolist()
        [[1, 3]]
    """

    name = "finercam"

    def __init__(self, gamma: float = 0.6, references: int = 3, base: str = "gradcam",
                 eigen_smooth: bool = False) -> None:
        self.eigen_smooth = eigen_smooth_flag(self.name, eigen_smooth)
        ContrastScore(gamma=gamma, references=references)  # the same checks, raised here
        if base not in BASES:
            raise ValueError(f"base must be one of {', '.join(BASES)}; got {base!r}")
        self.gamma = float(gamma)
        self.references = int(references)
        self.base = base

    def retarget(self, target: Target) -> Target:
        """The contrast score of ``target``'s class, which ``explain`` explains instead."""
        if isinstance(target, ContrastScore):
            return target
        if not isinstance(target, ClassScore):
            raise ValueError(
                f"finercam contrasts one class with its nearest classes; the target is "
                f"{target.describe()!r}. Use a class target (an index, a list of indices, None or "
                "ClassScore), or method='gradcam' for other targets."
            )
        return ContrastScore(target.index, target.output, gamma=self.gamma, references=self.references)

    def __call__(self, data: SiteData | Any) -> np.ndarray:
        return type(get_method(self.base))(eigen_smooth=self.eigen_smooth)(data)  # type: ignore[call-arg]
