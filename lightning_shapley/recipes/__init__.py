"""Recipes: YAML files that run the low-data pruning comparison end to end."""

from lightning_shapley.recipes.runner import run_recipe
from lightning_shapley.recipes.schema import Recipe, RecipeError, load_recipe

__all__ = ["DEFAULT_RECIPE", "Recipe", "RecipeError", "load_recipe", "run_recipe"]

from pathlib import Path

DEFAULT_RECIPE = Path(__file__).with_name("default.yaml")
