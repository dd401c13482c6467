"""mamba_compile.evals"""
