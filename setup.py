"""Package layout that pyproject.toml cannot express alone: the shipped anatomies live in the
top-level ``anatomy/`` folder (the project's design) and install as the package data
``bmiss.anatomies`` (wheels and editable installs alike; no symlink)."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["bmiss", "bmiss.*"]) + ["bmiss.anatomies"],
    package_dir={"bmiss.anatomies": "anatomy"},
    package_data={"bmiss": ["data/*", "review/static/*"], "bmiss.anatomies": ["*.toml", "README.md"]},
)
