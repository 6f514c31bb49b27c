"""Checking a run's methods, parameters and weights before anything is indexed or created."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mmreg.errors import InputError, UsageError

__all__ = ["check_methods"]


def check_methods(methods: Sequence[str], models: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Path and sha256 of the verified weights of every learned family ``methods`` use.

    ``models`` maps a family to user weights (``--model``); the others are the shipped ones.
    Each checkpoint is loaded once (sha256 and format checked), so a missing or corrupt file
    is one clear usage error before indexing, not N failed rows after it.

    Raises:
        UsageError: When weights are missing or fail their check.
    """
    from mmreg.methods import get_method, model_families
    from mmreg.models import load_checkpoint, model_record

    records = {}
    for family in model_families(methods):
        try:
            record = model_record(family, models.get(family))
            load_checkpoint(record["path"], method=family)
        except InputError as exc:
            raise UsageError(str(exc)) from exc
        records[family] = record
    paths = {family: record["path"] for family, record in records.items()}
    for spec in methods:
        try:
            get_method(spec, models=paths)  # parameters are checked when a method is built
        except InputError as exc:
            raise UsageError(str(exc)) from exc
    return records
