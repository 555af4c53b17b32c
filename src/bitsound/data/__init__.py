"""Datasets: sources found by name, splits, a feature cache and a data checker.

>>> from bitsound.data import open_dataset, leave_one_group_out
>>> ds = open_dataset("synthetic:n_per_class=4")
>>> len(ds), ds.labels[:2]
(32, ['bark', 'bird_chirp'])

Importing this package registers every built-in source (``folder``, ``manifest``, ``fsdd``,
``esc10-2015``, ``esc50``, ``esc10``, ``urbansound8k``, ``tut2017``, ``tut2017-3class``,
``tau2019``, ``tau2020-mobile``, ``tau2022-mobile``, ``tau2020-3class``, ``xeno-canto``,
``synthetic``, ``sed``).
"""

# Source modules register themselves on import.
from bitsound.data import (  # noqa: F401
    esc,
    folder,
    fsdd,
    manifest,
    sed,
    synthetic,
    tau,
    tut2017,
    urbansound8k,
    xeno_canto,
)
from bitsound.data.cache import FeatureCache, default_cache_root, make_key
from bitsound.data.check import CheckReport, check_dataset
from bitsound.data.records import Clip, Dataset
from bitsound.data.registry import list_datasets, open_dataset, register_dataset
from bitsound.data.splits import (
    Split,
    given_folds,
    group_split,
    leave_one_group_out,
    stratified_split,
    unseen_device_split,
)
from bitsound.data.synthetic import SyntheticDataset, SyntheticParams

__all__ = [
    "CheckReport",
    "Clip",
    "Dataset",
    "FeatureCache",
    "Split",
    "SyntheticDataset",
    "SyntheticParams",
    "check_dataset",
    "default_cache_root",
    "given_folds",
    "group_split",
    "leave_one_group_out",
    "list_datasets",
    "make_key",
    "open_dataset",
    "register_dataset",
    "stratified_split",
    "unseen_device_split",
]
