import os
import threading

import pytest

from ulr_spark.config import SparkConfig, config_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def spark():
    from ulr_spark.io.spark import get_spark

    session = get_spark(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="2g"))
    yield session
    session.stop()


def small_config(root, **sections):
    """A config for small test data under ``root``; ``sections`` override whole keys."""
    data = {
        "spark": {"master": "local[2]", "shuffle_partitions": 4},
        "tables": {"root": str(root)},
        "simulate": {
            "num_queries": 200,
            "candidates_per_query": 15,
            "num_requests": 2000,
            "partitions": 2,
            "days": 2,
        },
        "examples": {"partitions": 4},
        "train": {"num_processes": 2, "epochs": 2, "batch_size": 128, "bias_curve_sample": 2000},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


def run_at_once(action, run_ids):
    """Run ``action(run_id)`` for every run id in its own thread, all started together; returns
    the errors raised, as one line each (the caller asserts there are none)."""
    start, errors = threading.Barrier(len(run_ids)), []

    def run(run_id):
        try:
            start.wait()
            action(run_id)
        except Exception as error:  # collected: the caller's assertion names it
            errors.append(f"{run_id}: {type(error).__name__}: {str(error)[:300]}")

    threads = [threading.Thread(target=run, args=(r,)) for r in run_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
