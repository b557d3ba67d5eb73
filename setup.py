import re
from pathlib import Path

from setuptools import find_packages, setup

# One version, kept in ulr_spark/__init__.py (model cards record it).
VERSION = re.search(r'__version__ = "([^"]+)"', (Path(__file__).parent / "ulr_spark" / "__init__.py").read_text()).group(1)

setup(
    name="ulr-spark",
    version=VERSION,
    description="Remove position bias from click logs with two-tower models on Spark, Petastorm and PyTorch.",
    packages=find_packages(include=["ulr_spark", "ulr_spark.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=[
        # Keep in step with requirements.txt (the pinned, tested set).
        "pyspark>=4.0,<4.1",
        "delta-spark>=4.0,<4.1",
        "petastorm==0.12.1",
        "pyarrow>=14,<15",
        "numpy>=1.26,<2",
        "pandas>=2.1,<3",
        "torch>=2.4,<3",
        "pyyaml>=6",
        "fsspec>=2023.1",
        "pydantic>=2.7,<3",
    ],
    extras_require={"test": ["pytest>=8"], "mlflow": ["mlflow-skinny>=2.10"]},
    # ulr-spark-job: the same command for job runners that ignore a return code (Databricks).
    entry_points={"console_scripts": ["ulr-spark=ulr_spark.cli:main", "ulr-spark-job=ulr_spark.cli:job"]},
)
