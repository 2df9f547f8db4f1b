"""AU methods, one module each, built by name: `create_method("ks", num_aus=12, preset="tiny")`."""
from aubench.models.base import (AUMethod, Preset, Stage, TrainState, available_methods, create_method,
                                 method_class, register_method)
from aubench.models import knowledge_spreader  # noqa: F401  (registers "ks")
from aubench.models import megraphau  # noqa: F401  (registers "megraphau")
from aubench.models import maefau  # noqa: F401  (registers "maefau")
from aubench.models import resnet_baseline  # noqa: F401  (registers "resnet")
from aubench.models import rrl  # noqa: F401  (registers "rrl")
from aubench.models import vivit  # noqa: F401  (registers "vivit")
from aubench.models import regnet_tf  # noqa: F401  (registers "regnet-tf")

__all__ = ["AUMethod", "Preset", "Stage", "TrainState", "available_methods", "create_method", "method_class",
           "register_method"]
