"""mamba-compile: Mamba ops and models that torch.compile, torch.export and AOTInductor understand."""

from . import ops

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
