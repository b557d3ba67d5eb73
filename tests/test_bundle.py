"""The Databricks Asset Bundle (databricks.yml, resources/*.yml) runs the daily DAG that the
library promises: the stages in order, each an ``ulr-spark`` command the project's own parser
and config loader accept, with the wheel, train alone on the GPU cluster, one run id.

Pure Python: the YAML is read with PyYAML, variables are replaced by their defaults, the job's
dynamic values by what Databricks would put there. No Databricks CLI and no Spark."""

import copy
import glob
import graphlib
import os
import re
import sys

import pytest
import yaml

from tests.conftest import ROOT
from ulr_spark import cli
from ulr_spark.config import ConfigError, load_config
from ulr_spark.io.artifacts import check_run_id
from ulr_spark.pipeline import STAGES

DAG = {"build_examples": set(), "train": {"build_examples"}, "score": {"train"}, "evaluate": {"score"}}
ORDER = ["build_examples", "train", "score", "evaluate"]
GPU_CLUSTER, CPU_CLUSTER = "gpu", "cpu"
WHEEL = "../dist/*.whl"  # relative to resources/
JOB_RUN_ID = "987654321012345"  # what {{job.run_id}} becomes: the job run's numeric id
BUNDLE_VALUES = {
    "workspace.file_path": ROOT,  # where the bundle's files are synced: the repository, here
    "workspace.current_user.short_name": "someone",
    "workspace.current_user.userName": "someone@example.com",
    "bundle.name": "ulr-spark",
    "bundle.target": "dev",
}
VAR = re.compile(r"\$\{var\.([A-Za-z0-9_]+)\}")
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")
JOB_PARAMETER = re.compile(r"\{\{job\.parameters\.([A-Za-z0-9_]+)\}\}")


def load_bundle():
    with open(os.path.join(ROOT, "databricks.yml")) as handle:
        bundle = yaml.safe_load(handle)
    for pattern in bundle.get("include", []):
        for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
            with open(path) as handle:
                for kind, items in yaml.safe_load(handle)["resources"].items():
                    bundle.setdefault("resources", {}).setdefault(kind, {}).update(items)
    return bundle


def strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def substitute(value, bundle):
    """A value as the deployed job sees it: ${var.*} and ${workspace.*}/${bundle.*} first (at
    deploy time, variable defaults), then {{job.parameters.*}} and {{job.run_id}} (at run time)."""
    variables = {name: str(spec["default"]) for name, spec in bundle["variables"].items()}

    def deploy(text):
        for _ in range(3):  # a default may itself name ${workspace...}
            text = VAR.sub(lambda m: variables[m.group(1)], text)
            text = REFERENCE.sub(lambda m: BUNDLE_VALUES[m.group(1)], text)
        return text

    (job,) = bundle["resources"]["jobs"].values()
    parameters = {p["name"]: deploy(str(p["default"])) for p in job.get("parameters", [])}
    text = JOB_PARAMETER.sub(lambda m: parameters[m.group(1)], deploy(str(value)))
    return text.replace("{{job.run_id}}", JOB_RUN_ID)


def parsed_tasks(bundle):
    """task_key -> (the task, its parsed ulr-spark arguments)."""
    (job,) = bundle["resources"]["jobs"].values()
    result = {}
    for task in job["tasks"]:
        argv = [substitute(p, bundle) for p in task["python_wheel_task"]["parameters"]]
        result[task["task_key"]] = (task, cli.parser().parse_args(argv))
    return result


def check_bundle(bundle):
    (job,) = bundle["resources"]["jobs"].values()
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert set(tasks) == set(DAG), f"tasks {sorted(tasks)}, expected {sorted(DAG)}"
    needs = {key: {d["task_key"] for d in task.get("depends_on", [])} for key, task in tasks.items()}
    assert needs == DAG, f"dependencies {needs}"
    assert list(graphlib.TopologicalSorter(needs).static_order()) == ORDER

    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    parsed = parsed_tasks(bundle)
    run_ids, tables = set(), set()
    for key, (task, args) in parsed.items():
        assert task["python_wheel_task"]["package_name"] == "ulr_spark"
        assert {"whl": WHEEL} in task.get("libraries", []), f"{key} does not install the wheel"
        assert args.stage == key.replace("_", "-") and args.stage in STAGES, (key, args.stage)
        assert os.path.isfile(args.config) and os.path.dirname(args.config) == os.path.join(ROOT, "conf"), args.config
        config = load_config(args.config, args.overrides)  # every --set names a real key, every value is valid
        on_gpu = task["job_cluster_key"] == GPU_CLUSTER
        assert on_gpu == (key == "train"), f"{key} runs on {task['job_cluster_key']}"
        assert config.train.use_gpu == on_gpu, f"{key}: train.use_gpu={config.train.use_gpu}"
        if on_gpu:
            assert config.train.num_processes == int(substitute(clusters[GPU_CLUSTER]["num_workers"], bundle)), (
                "one training process per GPU node"
            )
        run_ids.add(check_run_id(args.run_id))
        tables.add(tuple(config.tables.path(t) for t in ("impressions", "examples", "models", "scores", "metrics")))
    assert run_ids == {JOB_RUN_ID}, f"the stages must share the job run's id, got {run_ids}"
    assert len(tables) == 1, f"the stages must read and write the same tables: {tables}"
    assert "gpu" in substitute(clusters[GPU_CLUSTER]["spark_version"], bundle)
    assert "gpu" not in substitute(clusters[CPU_CLUSTER]["spark_version"], bundle)


def test_the_daily_job_runs_the_stages_in_order_with_the_wheel_and_train_on_the_gpu():
    check_bundle(load_bundle())


@pytest.mark.parametrize("break_it", ["remove evaluate", "evaluate before score", "train on cpu", "no wheel", "bad key"])
def test_the_check_fails_on_a_broken_bundle(break_it):
    """The check above is not vacuous: each of these bundles fails it."""
    bundle = copy.deepcopy(load_bundle())
    (job,) = bundle["resources"]["jobs"].values()
    tasks = {t["task_key"]: t for t in job["tasks"]}
    if break_it == "remove evaluate":
        job["tasks"].remove(tasks["evaluate"])
    elif break_it == "evaluate before score":
        tasks["evaluate"]["depends_on"] = [{"task_key": "train"}]
    elif break_it == "train on cpu":
        tasks["train"]["job_cluster_key"] = CPU_CLUSTER
    elif break_it == "no wheel":
        del tasks["score"]["libraries"]
    else:
        tasks["score"]["python_wheel_task"]["parameters"] += ["--set", "tables.no_such_table=x"]
    with pytest.raises((AssertionError, ConfigError)):
        check_bundle(bundle)


def test_variables_job_parameters_schedule_and_targets():
    bundle = load_bundle()
    declared = set(bundle["variables"])
    used = {m for text in strings(bundle) for m in VAR.findall(text)}
    assert used <= declared, f"undeclared variables {used - declared}"
    assert declared <= used, f"variables nobody reads {declared - used}"
    (job,) = bundle["resources"]["jobs"].values()
    parameters = {p["name"] for p in job["parameters"]}
    assert {m for text in strings(job) for m in JOB_PARAMETER.findall(text)} <= parameters
    assert [p["default"] for p in job["parameters"] if p["name"] == "run_id"] == ["{{job.run_id}}"]

    schedule = job["schedule"]
    assert schedule["pause_status"] == "${var.schedule_pause_status}"
    assert bundle["variables"]["schedule_pause_status"]["default"] == "PAUSED"
    assert len(substitute(schedule["quartz_cron_expression"], bundle).split()) in (6, 7)
    assert job["max_concurrent_runs"] == 1

    targets = bundle["targets"]
    assert targets["dev"]["mode"] == "development" and targets["dev"]["default"] is True
    assert targets["prod"]["mode"] == "production"
    for target in targets.values():
        assert set(target.get("variables", {})) <= declared

    (artifact,) = bundle["artifacts"].values()
    assert artifact["type"] == "whl" and artifact["path"] == "." and "-w dist" in artifact["build"]
    assert os.path.normpath(os.path.join(ROOT, "resources", os.path.dirname(WHEEL))) == os.path.join(ROOT, "dist")


def test_the_tasks_entry_point_is_a_console_script_that_fails_the_task(monkeypatch, tmp_path):
    """The tasks call the wheel's ``ulr-spark-job``, which raises on a failed command: a job runner
    that ignores return values would otherwise mark the task (and let the next stage start) as
    succeeded."""
    with open(os.path.join(ROOT, "setup.py")) as handle:
        scripts = dict(re.findall(r'"([a-z-]+)=([a-z_.]+:[a-z_]+)"', handle.read()))
    (job,) = load_bundle()["resources"]["jobs"].values()
    for task in job["tasks"]:
        assert scripts[task["python_wheel_task"]["entry_point"]] == "ulr_spark.cli:job"
    missing = str(tmp_path / "missing.yaml")
    monkeypatch.setattr(sys, "argv", ["ulr-spark-job", "evaluate", "--config", missing])
    with pytest.raises(SystemExit) as raised:
        cli.job()
    assert raised.value.code == 2
    assert cli.main(["evaluate", "--config", missing]) == 2, "ulr-spark itself still returns its code"
