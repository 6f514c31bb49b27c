"""Landmark groups of the keypoint-transfer table (Windsor et al. 2021, Table 1).

The whole-body paper reports keypoint errors for three joints: HJ (hip joints: both
femoral heads), S1 (the first sacral vertebra) and SJ (shoulder joints: both humeral
heads). The names are those of :data:`mmreg.imaging.phantoms.wholebody.LANDMARK_NAMES`
and of the demo's landmark tables. This is the one definition: the group report's
``table1.csv`` and ``benchmarks/bench_wholebody.py`` both read it.

Example:
    >>> landmark_group("femoral_head_right"), landmark_group("anterior_commissure")
    ('HJ', 'anterior_commissure')
    >>> group_order(["all", "knee", "SJ", "HJ", "S1", "Ankle"])
    ['HJ', 'S1', 'SJ', 'Ankle', 'knee', 'all']
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ALL", "GROUP_TITLES", "LANDMARK_GROUPS", "group_order", "landmark_group"]

#: Group -> the landmark names it pools, in the paper's column order.
LANDMARK_GROUPS: dict[str, tuple[str, ...]] = {
    "HJ": ("femoral_head_left", "femoral_head_right"),
    "S1": ("s1",),
    "SJ": ("humeral_head_left", "humeral_head_right"),
}

#: What each group is, for tables and captions.
GROUP_TITLES: dict[str, str] = {
    "HJ": "hip joints (femoral heads)",
    "S1": "first sacral vertebra",
    "SJ": "shoulder joints (humeral heads)",
}

#: The row pooling every point.
ALL = "all"

_GROUP_OF = {name: group for group, names in LANDMARK_GROUPS.items() for name in names}


def landmark_group(name: str) -> str:
    """The group of a landmark name; a name in no group is its own group."""
    return _GROUP_OF.get(str(name), str(name))


def group_order(groups: Iterable[str]) -> list[str]:
    """Distinct groups in report order: the paper's (HJ, S1, SJ), the others, ``all``.

    Other groups (landmarks in no group) sort case-insensitively.
    """
    distinct = list(dict.fromkeys(str(g) for g in groups))
    known = [g for g in LANDMARK_GROUPS if g in distinct]
    others = sorted((g for g in distinct if g not in LANDMARK_GROUPS and g != ALL), key=str.lower)
    tail = [ALL] if ALL in distinct else []
    return known + others + tail
