"""Methods: each is one module with a controller coroutine, registered by name."""

from .base import Context, Decoding, Method, Outcome, make_method, method_class, method_names, register

_BUILTIN = ("vanilla", "budget", "deer", "flashthink", "ffs", "majority")


def _load_all() -> None:
    """Import the built-in method modules so they register themselves."""
    import importlib

    for mod in _BUILTIN:
        importlib.import_module(f"{__name__}.{mod}")


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
