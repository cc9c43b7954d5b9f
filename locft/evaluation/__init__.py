"""Measurements of a model version (editing metrics, general capability). Measures, decides nothing.

Submodules import their heavy dependencies (torch, lm-eval) lazily; importing this package is cheap.
"""
