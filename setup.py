"""The packages of ovss; everything else is in pyproject.toml.

The recipes live in the top-level recipes/ folder and ship inside the wheel as the data-only package
ovss_cli.recipes_data (pyproject.toml alone cannot add a mapped package to a discovered list).
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["ovss_cli*"]), "ovss_cli.recipes_data"],
      package_dir={"ovss_cli.recipes_data": "recipes"})
