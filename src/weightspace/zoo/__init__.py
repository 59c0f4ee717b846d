"""Model zoos: tasks, architectures, vectorised training, on-disk store, import of user sweeps.

>>> from weightspace.zoo import Zoo, generate_zoo, get_preset
>>> zoo = generate_zoo("zoo-tiny", get_preset("tiny"))          # doctest: +SKIP
>>> zoo = Zoo.open("zoo-tiny")                                   # doctest: +SKIP
>>> zoo.table.head(); zoo.graph(zoo.ids[0])                      # doctest: +SKIP
"""

from weightspace.zoo.architectures import (
    ArchConfig,
    UnknownNameError,
    build_model,
    fold_batchnorm,
    get_arch,
    list_archs,
    register_arch,
)
from weightspace.zoo.generate import generate_zoo, plan_shards
from weightspace.zoo.importer import import_zoo
from weightspace.zoo.metrics_table import MetricsTableError
from weightspace.zoo.presets import PRESETS, Preset, get_preset, list_presets
from weightspace.zoo.store import FORMAT_VERSION, Zoo, ZooDataset, ZooError
from weightspace.zoo.sweep import HyperParams, RunSpec, SearchSpace, TrainSettings
from weightspace.zoo.tasks import Task, get_task, list_tasks, register_task
from weightspace.zoo.trainer import train_group, train_reference

__all__ = [
    "FORMAT_VERSION",
    "PRESETS",
    "ArchConfig",
    "HyperParams",
    "MetricsTableError",
    "Preset",
    "RunSpec",
    "SearchSpace",
    "Task",
    "TrainSettings",
    "UnknownNameError",
    "Zoo",
    "ZooDataset",
    "ZooError",
    "build_model",
    "fold_batchnorm",
    "generate_zoo",
    "get_arch",
    "get_preset",
    "get_task",
    "import_zoo",
    "list_archs",
    "list_presets",
    "list_tasks",
    "plan_shards",
    "register_arch",
    "register_task",
    "train_group",
    "train_reference",
]
