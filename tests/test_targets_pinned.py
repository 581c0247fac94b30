"""``ClassScore.pinned``: the one place a class target is pinned to the classes found, as
``for_sample``, ``access.part_target`` and the torch DeepLIFT reference run use it."""

from __future__ import annotations

import numpy as np

from camlens.access import part_target
from camlens.targets import ClassScore, Logit

FOUND = np.array([7, 2, 5, 1], np.int64)


def test_pinned_to_one_class_per_sample_or_one_for_all_or_its_own():
    top = Logit(output="probs")
    per_sample = top.pinned(FOUND)
    assert type(per_sample) is Logit and per_sample.output == "probs"
    assert per_sample.index == [7, 2, 5, 1] and all(type(i) is int for i in per_sample.index)
    one = top.pinned(FOUND[2])
    assert one.index == 5 and type(one.index) is int
    three = ClassScore(3)
    own = three.pinned(None)
    assert own.index == 3 and own is not three  # a copy: a caller may change it
    assert top.index is None  # the caller's target stays as it was


def test_for_sample_and_part_target_pin_as_before():
    top = ClassScore()
    assert top.for_sample(2, FOUND).index == 5
    assert ClassScore(4).for_sample(2, None).index == 4
    assert part_target(top, FOUND, slice(1, 3)).index == [2, 5]
    assert part_target(top, FOUND, slice(3, 4)).index == [1]  # a list even for one sample
    assert part_target(ClassScore([9, 8, 7, 6]), None, slice(1, 3)).index == [8, 7]
    assert top.index is None
