"""mamba_compile.models"""
