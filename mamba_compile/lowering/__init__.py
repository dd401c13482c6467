"""mamba_compile.lowering"""
