"""AU methods, one module each, built by name: `create_method("ks", num_aus=12, preset="tiny")`."""
from aubench.models.base import (AUMethod, Preset, TrainState, available_methods, create_method,
                                 method_class, register_method)

__all__ = ["AUMethod", "Preset", "TrainState", "available_methods", "create_method", "method_class",
           "register_method"]
