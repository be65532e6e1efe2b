"""Methods: each is one module with a controller coroutine, registered by name."""

from .base import METHODS, Context, Decoding, Method, Outcome, make_method, method_class, method_names, register

#: The built-in methods, each a module of this package that registers its class when imported.
BUILTIN = {
    "vanilla": "Vanilla",
    "budget": "Budget",
    "deer": "Deer",
    "flashthink": "FlashThink",
    "dynasor": "Dynasor",
    "consistency": "Consistency",
    "entropy": "Entropy",
    "ffs": "Ffs",
    "majority": "Majority",
}
for _name, _cls in BUILTIN.items():
    METHODS.register(_name, lazy=f"{__name__}.{_name}:{_cls}")

__all__ = [
    "Context",
    "Decoding",
    "Method",
    "Outcome",
    "make_method",
    "method_class",
    "method_names",
    "register",
]
