"""The lab: reference models, offline datasets, a plain training loop and the demo.

The recipes, examples, benchmarks and tests use it; the library's core never imports it.
"""
