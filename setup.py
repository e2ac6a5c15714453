"""Which packages the distribution holds; everything else is in pyproject.toml.

Here rather than in pyproject.toml because `packages.find` cannot add a package from elsewhere:
the shipped constitutions stay in the top-level constitutions/ directory (where users and docs
point) and are installed as the package ``selfimprove.constitutions``. Subpackages of
selfimprove/ are still found, so moving modules around needs no edit here.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["selfimprove", "selfimprove.*"]),
        "selfimprove.constitutions",
    ],
    package_dir={"selfimprove.constitutions": "constitutions"},
)
