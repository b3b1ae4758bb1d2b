"""Only for the optional C prefilter; everything else is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("watchdog_d.logs._fastscan", ["watchdog_d/logs/_fastscan.c"],
                             optional=True)])
