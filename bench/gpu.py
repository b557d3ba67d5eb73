"""The GPU path, checked in one prepared script: the same log trained on the CPU and on the
GPUs, the quality of both against the simulator's truth, and slates per second per GPU
against per CPU core.

    .venv/bin/python -m bench.gpu --root /tmp/ulr-gpu --json gpu.json [--impressions 2000000]

On a machine with NVIDIA GPUs (``nvidia-smi`` on the PATH). Steps, in one Spark session whose
driver declares its GPUs (``spark.driver.resource.gpu.amount`` and a discovery script, which
``TorchDistributor(local_mode=True, use_gpu=True)`` requires):

1. simulate a PBM log (``conf/scale.yaml``; its truth is known) and build the examples;
2. train, score and evaluate the same models twice: ``train.use_gpu=false`` with one process
   per two cores (gloo), then ``train.use_gpu=true`` with one process per GPU (nccl);
3. one training process's step rate on each device (the same model, batch and step, fed by
   ``train.input=memory`` tensors on that device), per CPU core and per GPU.

The GPU run matches when its NDCG@10 and bias-curve error are within ``--tolerance`` of the
CPU run's (the runs differ by their DDP world and float arithmetic, not their data). Without a
GPU the script says so and exits 2 after the CPU part.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
import time

import torch

DISCOVERY = """#!/bin/sh
# Spark's GPU discovery: the driver's GPUs as {"name": "gpu", "addresses": [...]}.
echo "{\\"name\\": \\"gpu\\", \\"addresses\\": [$(nvidia-smi --query-gpu=index --format=csv,noheader | sed 's/.*/"&"/' | paste -sd,)]}"
"""


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_settings(root: str, gpus: int) -> list[str]:
    """The config overrides that let a local Spark session hand its GPUs to TorchDistributor."""
    script = os.path.join(root, "gpu_discovery.sh")
    os.makedirs(root, exist_ok=True)
    with open(script, "w") as handle:
        handle.write(DISCOVERY)
    os.chmod(script, os.stat(script).st_mode | stat.S_IXUSR)
    conf = {"spark.driver.resource.gpu.amount": str(gpus), "spark.driver.resource.gpu.discoveryScript": script}
    return ["spark.conf=" + json.dumps(conf)]


def quality(spark, config, run_id: str) -> dict:
    from ulr_spark.evaluation import evaluate

    rows = evaluate(config, spark, run_id).where("position IS NULL").collect()
    return {f"{r['model']}:{r['metric']}": r["value"] for r in rows}


def step_rate(spark, config, device: torch.device, steps: int) -> float:
    """Slates per second of one process on ``device`` (bench.throughput's timed steps)."""
    from bench.throughput import _timed_steps, one_process_cache
    from ulr_spark.models.registry import build_model
    from ulr_spark.training.loaders import memory_batches

    tc = config.train
    _, shape, spec, converter, cache, normaliser = one_process_cache(spark, config, "_gpu_bench")
    try:
        torch.manual_seed(tc.seed)
        with memory_batches(converter, tc.batch_size, 0, 1, shape.max_slate_size, device, tc.seed) as batches:
            return _timed_steps(build_model(spec).to(device), batches, steps, 20, normaliser)
    finally:
        converter.delete()
        shutil.rmtree(cache, ignore_errors=True)


def run(args) -> dict:
    from ulr_spark.config import load_config
    from ulr_spark.examples.slates import build_examples
    from ulr_spark.io.spark import get_spark
    from ulr_spark.scoring import score
    from ulr_spark.simulation.simulator import simulate
    from ulr_spark.training.driver import train
    from ulr_spark.training.loaders import quiet_petastorm_warnings

    quiet_petastorm_warnings()
    gpus = gpu_count()
    cores = os.cpu_count() or 1
    cpu_processes = max(1, cores // 2)
    base = [f"simulate.num_requests={args.impressions // 10}", f"tables.root={args.root}", f"train.epochs={args.epochs}", "evaluate.queries=all"]
    overrides = base + (gpu_settings(args.root, gpus) if gpus else [])
    config = load_config(args.config, overrides)
    result: dict = {"gpus": gpus, "cores": cores, "impressions": args.impressions, "overrides": overrides, "runs": {}}
    if gpus:
        result["gpu_name"] = torch.cuda.get_device_name(0)
    spark = get_spark(config.spark)
    simulate(spark, config, "gpu-bench")
    build_examples(config, spark, "gpu-bench")
    plans = {"cpu": (False, cpu_processes)} | ({"gpu": (True, gpus)} if gpus else {})
    for name, (use_gpu, processes) in plans.items():
        run_config = load_config(args.config, overrides + [f"train.use_gpu={str(use_gpu).lower()}", f"train.num_processes={processes}"])
        started = time.perf_counter()
        train(run_config, spark, name)
        seconds = time.perf_counter() - started
        score(run_config, spark, name)
        result["runs"][name] = {"processes": processes, "train_seconds": seconds, "metrics": quality(spark, run_config, name)}
        print(f"bench.gpu: {name}: {result['runs'][name]}", flush=True)
    torch.set_num_threads(1)
    result["slates_per_s_per_cpu_core"] = step_rate(spark, config, torch.device("cpu"), args.steps)
    if gpus:
        result["slates_per_s_per_gpu"] = step_rate(spark, config, torch.device("cuda", 0), args.steps)
        cpu, gpu = result["runs"]["cpu"]["metrics"], result["runs"]["gpu"]["metrics"]
        result["quality_gaps"] = {k: abs(gpu[k] - cpu[k]) for k in cpu if k in gpu}
        result["matches"] = all(gap <= args.tolerance for gap in result["quality_gaps"].values())
    spark.stop()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--config", default="conf/scale.yaml")
    parser.add_argument("--impressions", type=int, default=2_000_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300, help="timed steps of the per-device step rate")
    parser.add_argument("--tolerance", type=float, default=0.02, help="largest NDCG / curve-error gap, GPU vs CPU")
    args = parser.parse_args(argv)
    if shutil.which("nvidia-smi") is None:
        print("bench.gpu: no nvidia-smi on the PATH: the GPU runs are skipped", flush=True)
    result = run(args)
    result["command"] = " ".join([".venv/bin/python -m bench.gpu"] + (argv if argv is not None else sys.argv[1:]))
    with open(args.json, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))
    if not result["gpus"]:
        return 2
    return 0 if result["matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
