"""Only for the optional C modules; everything else is in pyproject.toml.

logs/_fastscan.c: the log scan's prefilter. rank/_exitstatus.c: a rank's real exit status
into its beacon (glibc on_exit). Without a compiler both fall back to pure Python.
"""
from setuptools import Extension, setup

setup(ext_modules=[
    Extension("watchdog_d.logs._fastscan", ["watchdog_d/logs/_fastscan.c"], optional=True),
    Extension("watchdog_d.rank._exitstatus", ["watchdog_d/rank/_exitstatus.c"], optional=True),
])
