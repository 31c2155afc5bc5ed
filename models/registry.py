"""Model names to classes: the built-in models plus any from the ``tradeday.models`` entry point group.

Another package adds a model without touching this repo by declaring, in its own
pyproject.toml::

    [project.entry-points."tradeday.models"]
    my_model = "my_package.my_module:MyModel"
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TypeVar

from models.base import SUPPORTED_VERSIONS, Model, ModelParams

ENTRY_POINT_GROUP = "tradeday.models"
BUILTIN_MODULES = (
    "models.volume_modulo",
    "models.opening_momentum",
    "models.moody_trader",
    "models.mean_reversion",
    "models.ma_crossover",
    "models.buy_close_sell_open",
)

_registry: dict[str, type[Model]] = {}
_loaded = False


def model_name(cls: type[Model]) -> str:
    default = cls.params_class.model_fields["name"].default
    if not isinstance(default, str) or not default:
        raise TypeError(
            f"{cls.params_class.__name__}.name needs a default: "
            f'name: Literal["my_model"] = "my_model"'
        )
    return default


M = TypeVar("M", bound=type[Model])


def register(cls: M) -> M:
    """Class decorator: make a model choosable by its params' ``name``."""
    if not issubclass(cls.params_class, ModelParams):
        raise TypeError(f"{cls.__name__}.params_class must subclass models.ModelParams")
    if cls.interface_version not in SUPPORTED_VERSIONS:
        raise TypeError(
            f"{cls.__name__} targets model interface v{cls.interface_version}; "
            f"this tradeday speaks v{', v'.join(map(str, SUPPORTED_VERSIONS))}"
        )
    name = model_name(cls)
    existing = _registry.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"model name {name!r} is taken by {existing.__module__}.{existing.__name__}"
        )
    _registry[name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        register(ep.load())


def get(name: str) -> type[Model]:
    _load()
    try:
        return _registry[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(names())}") from None


def names() -> list[str]:
    _load()
    return sorted(_registry)


def params_classes() -> list[type[ModelParams]]:
    """The registered models' params classes, in a stable order (the UI's tab order).

    Built-in models first, in ``BUILTIN_MODULES`` order (so the seed model is the default),
    then entry-point models by name.
    """
    _load()

    def order(cls: type[Model]) -> tuple[int, str]:
        module = cls.__module__
        rank = BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)
        return rank, model_name(cls)

    return [cls.params_class for cls in sorted(_registry.values(), key=order)]
