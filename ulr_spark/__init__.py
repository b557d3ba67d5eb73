"""ulr-spark: remove position bias from click logs with two-tower models on Spark, Petastorm
and PyTorch.

Production: ``config``, ``io``, ``examples``, ``models``, ``training``, ``scoring``,
``evaluation``, ``pipeline``, ``cli``, ``diagnostics`` and ``notebook``. Only for simulated data
and experiments, never imported by production code: ``simulation`` and ``experiments``.
CONTRIBUTING.md says where new code goes.
"""

# Recorded in every model card; setup.py reads the same value.
__version__ = "0.1.0"
