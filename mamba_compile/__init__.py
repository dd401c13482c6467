"""mamba-compile: Mamba ops and models that torch.compile, torch.export and AOTInductor understand."""

from . import ops

__version__ = "0.1.0"
__all__ = ["MambaConfig", "MambaLM", "load_package", "ops", "__version__"]


def __getattr__(name):  # the models load on first use: importing the package registers only the ops
    if name in ("MambaLM", "MambaConfig"):
        from . import models

        return getattr(models, name)
    if name == "load_package":
        from .lowering import load_package

        return load_package
    raise AttributeError(f"module 'mamba_compile' has no attribute {name!r}")
