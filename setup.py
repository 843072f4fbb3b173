"""Package discovery for vadapt's layout: the top-level folders ``backbones/``, ``tasks/`` and ``app/`` install as
``vadapt.backbones``, ``vadapt.tasks`` and ``vadapt.app`` (README "Layout").

Everything else lives in ``pyproject.toml``. setuptools' own ``packages.find`` cannot put a folder under another
package's name, so the package list is discovered here, under the mapping, instead of kept by hand;
``tests/test_packaging.py`` builds the wheel and checks that it holds every module.
"""

from setuptools import find_packages, setup

#: package name -> folder
PACKAGE_DIRS = {"vadapt": "vadapt", "vadapt.backbones": "backbones", "vadapt.tasks": "tasks", "vadapt.app": "app"}

packages = [
    name + (f".{sub}" if sub else "")
    for name, folder in PACKAGE_DIRS.items()
    for sub in ["", *find_packages(folder)]
]

setup(package_dir=PACKAGE_DIRS, packages=packages)
