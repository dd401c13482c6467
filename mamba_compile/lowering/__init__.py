"""What takes compiled models to deployment: loading AOTInductor packages (see package.py)."""

from .package import load_package, share_cxx_runtime

__all__ = ["load_package", "share_cxx_runtime"]
