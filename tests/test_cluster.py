"""spark-submit of the jobs/ stages on a standalone master and worker started on this machine,
with the library shipped as a packed environment (``--archives``) and training under
``TorchDistributor(local_mode=False)``: one barrier task per process on the worker's executor.
"""

import glob
import os
import subprocess

import pytest

from tests.conftest import ROOT
from tests.standalone import (
    ARCHIVE_ALIAS,
    SPARK_HOME,
    StandaloneCluster,
    build_wheel,
    clean_environ,
    pack,
    thin_environment,
)
from ulr_spark.io.spark import DELTA_PACKAGE

SMALL = [
    "simulate.num_queries=200",
    "simulate.candidates_per_query=15",
    "simulate.num_requests=2000",
    "simulate.partitions=2",
    "simulate.days=2",
    "examples.partitions=4",
    "train.models=[naive,additive]",
    "train.num_processes=2",
    "train.epochs=2",
    "train.batch_size=128",
    "train.bias_curve_sample=2000",
    # The cluster streams through Petastorm: the path a shard too large for memory takes
    # (the local tests read their small shards into memory, train.input=auto).
    "train.input=stream",
    "spark.shuffle_partitions=4",
]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The wheel, the environment built from it, and its archive."""
    base = tmp_path_factory.mktemp("ship")
    wheel = build_wheel(ROOT, str(base))
    python = thin_environment(wheel, str(base / "env"))
    return python, pack(str(base / "env"), str(base / "ulr-spark-env.tar.gz"))


def test_the_packed_environment_imports_the_wheel_not_the_source_tree(shipped, tmp_path):
    python, _ = shipped
    where = subprocess.run(
        [python, "-c", "import ulr_spark, torch, petastorm; print(ulr_spark.__file__)"],
        check=True, capture_output=True, text=True, cwd=str(tmp_path), env=clean_environ(),
    ).stdout.strip()
    assert not where.startswith(ROOT + os.sep), where


@pytest.mark.slow
def test_spark_submit_stages_on_a_standalone_cluster(shipped, tmp_path):
    python, archive = shipped
    tables = tmp_path / "tables"
    with StandaloneCluster(str(tmp_path / "cluster")) as cluster:
        submit = [
            os.path.join(SPARK_HOME, "bin", "spark-submit"),
            "--master", cluster.master_url,
            "--packages", DELTA_PACKAGE,
            "--archives", f"{archive}#{ARCHIVE_ALIAS}",
            "--conf", f"spark.pyspark.python=./{ARCHIVE_ALIAS}/bin/python",
            "--conf", f"spark.pyspark.driver.python={python}",
            "--conf", "spark.executor.cores=2",
            "--executor-memory", "2g",
            "--driver-memory", "2g",
        ]
        settings = [f"--set=tables.root={tables}"] + [f"--set={s}" for s in SMALL]
        # One application runs every stage (jobs/run.py): each spark-submit pays for a JVM, the
        # Delta package and the executors' unpacking of the archive, and the stages' own jobs
        # (jobs/<stage>.py) are the same thin entry point (tests/test_cli.py).
        done = subprocess.run(
            submit + [os.path.join(ROOT, "jobs", "run.py"), "--config", os.path.join(ROOT, "conf", "demo.yaml"),
                      "--run-id", "cluster-run", "--simulate"] + settings,
            capture_output=True, text=True, cwd=str(tmp_path), env=clean_environ(), timeout=900,
        )
        assert done.returncode == 0, f"run failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        output = done.stdout + done.stderr
        application_dirs = cluster.executor_dirs()

    for stage in ("simulate", "build-examples", "train", "score", "evaluate"):
        assert f"== {stage} done in" in output, stage
    # Training ran as barrier tasks on the worker, not as local torchrun processes.
    assert "local_mode=False" in output
    assert "Started distributed training with 2 executor processes" in output
    assert "train[additive] epoch 2/2" in output
    # The executors imported the library from the unpacked archive.
    assert any(
        glob.glob(os.path.join(d, ARCHIVE_ALIAS, "lib", "python*", "site-packages", "ulr_spark", "training", "worker.py"))
        for d in application_dirs
    ), application_dirs

    from ulr_spark.config import SparkConfig
    from ulr_spark.io.spark import get_spark

    spark = get_spark(SparkConfig(master="local[2]"))
    scores = spark.read.format("delta").load(str(tables / "scores")).where("run_id = 'cluster-run'")
    candidates = spark.read.format("delta").load(str(tables / "candidates")).count()
    by_model = {r["model"]: r["count"] for r in scores.groupBy("model").count().collect()}
    assert by_model == {"naive": candidates, "additive": candidates}
    history = spark.sql(f"DESCRIBE HISTORY delta.`{tables / 'scores'}`").select("userMetadata").first()
    assert history["userMetadata"] == "ulr-spark run_id=cluster-run"
