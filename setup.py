"""The package list, derived from the source tree (everything else is in pyproject.toml).

nasopt/ is the package; search_spaces/ and cli/ live at the top level of the repository but are
installed inside it, as nasopt.search_spaces and nasopt.cli. setuptools' `packages.find` in
pyproject.toml cannot remap folders, so the list is computed here: every package under nasopt/ plus
the two mapped folders and their own subpackages. A new subpackage (a folder with an __init__.py) is
picked up without editing anything; tests/test_wheel.py checks that the wheel holds every .py file.
"""

from setuptools import find_packages, setup

MAPPED = {"nasopt.search_spaces": "search_spaces", "nasopt.cli": "cli"}  # package -> folder

packages = find_packages(include=["nasopt", "nasopt.*"])
for package, folder in MAPPED.items():
    packages += [package, *(f"{package}.{sub}" for sub in find_packages(folder))]

setup(packages=sorted(packages), package_dir={"nasopt": "nasopt", **MAPPED})
