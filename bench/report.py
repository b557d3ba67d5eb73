"""docs/benchmarks.md from the per-size results of bench/scale.py."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

STAGES = ("simulate", "build_examples", "train", "score")
ROLES = ("driver_python", "jvm", "python_worker", "training_process")
MIB = 1024 * 1024

# The targets the benchmark checks (on the 2-core machine).
MAX_SPARK_OVER_DUCKDB_AT_10M = 1.5
MIN_INPUT_RATIO = 0.95
MIN_SCORE_RATIO = 0.7
MAX_COST_GROWTH = 1.25
MIN_COMPRESSION = 10.0


def label(impressions: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if impressions >= size and impressions % size == 0:
            return f"{impressions // size}{unit}"
    return str(impressions)


def parse_size(text: str) -> int:
    units = {"k": 10**3, "M": 10**6, "B": 10**9}
    text = text.strip()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
            memory = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration):
        pass
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    except (OSError, IndexError):
        java = "?"
    versions = {}
    for package in ("pyspark", "delta-spark", "petastorm", "torch", "pyarrow", "duckdb", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return {"cpu": cpu, "memory": memory, "python": platform.python_version(), "java": java, "versions": versions}


def cost_per_impression(result: dict, stage: str) -> float:
    """Core-microseconds per impression of the log."""
    return result["seconds"][stage] * result["cores"] / result["impressions"] * 1e6


def targets(results: list[dict]) -> list[tuple[str, str, bool]]:
    """(target, what was measured, met) for each target the results can answer."""
    by_size = {r["impressions"]: r for r in results}
    rows = []
    at_10m = by_size.get(10**7)
    if at_10m and "error" in at_10m["duckdb"]:
        rows.append((f"build-examples within {MAX_SPARK_OVER_DUCKDB_AT_10M:g}x of DuckDB at 10M",
                     f"DuckDB failed: {at_10m['duckdb']['error']}", False))
    elif at_10m:
        ratio = at_10m["seconds"]["build_examples"] / at_10m["duckdb"]["seconds"]
        rows.append((
            f"build-examples within {MAX_SPARK_OVER_DUCKDB_AT_10M:g}x of DuckDB at 10M",
            f"{ratio:.2f}x ({at_10m['seconds']['build_examples']:.1f} s vs {at_10m['duckdb']['seconds']:.1f} s)",
            ratio <= MAX_SPARK_OVER_DUCKDB_AT_10M,
        ))
    for r in results:
        if "training_throughput" in r:
            t = r["training_throughput"]
            chosen = t["memory_input_ratio"] if t["input_chosen"] == "memory" else t["ratio"]
            fed = t["memory_input_slates_per_s"] if t["input_chosen"] == "memory" else t["petastorm_slates_per_s"]
            rows.append((
                f"training fed by its input (train.input=auto) >= {MIN_INPUT_RATIO:.0%} of in-memory tensors ({label(r['impressions'])})",
                f"{chosen:.0%} ({fed:,.0f} vs {t['in_memory_slates_per_s']:,.0f} slates/s; auto chose {t['input_chosen']})",
                chosen >= MIN_INPUT_RATIO,
            ))
        if "score_throughput" in r:
            s = r["score_throughput"]
            rows.append((
                f"score >= {MIN_SCORE_RATIO:.0%} of plain PyTorch ({label(r['impressions'])})",
                f"{s['ratio']:.0%} ({s['spark_rows_per_s']:,.0f} vs {s['torch_rows_per_s']:,.0f} rows/s)",
                s["ratio"] >= MIN_SCORE_RATIO,
            ))
    small, large = by_size.get(10**7), by_size.get(10**8)
    if small and large:
        for stage in STAGES:
            growth = cost_per_impression(large, stage) / cost_per_impression(small, stage)
            rows.append((
                f"{stage}: cost per impression at 100M within {MAX_COST_GROWTH}x of 10M",
                f"{growth:.2f}x ({cost_per_impression(small, stage):.2f} -> {cost_per_impression(large, stage):.2f} core-us)",
                growth <= MAX_COST_GROWTH,
            ))
        peak = max(large["memory"][s]["driver_python_peak_bytes"] for s in STAGES)
        base = max(small["memory"][s]["driver_python_peak_bytes"] for s in STAGES)
        rows.append((
            "driver (Python) memory does not grow with the data, 10M -> 100M",
            f"{base / MIB:,.0f} -> {peak / MIB:,.0f} MiB peak",
            peak <= 1.25 * base,
        ))
    biggest = max(results, key=lambda r: r["impressions"])
    compression = biggest["examples"]["compression"]
    rows.append((
        f"Zipf log compresses >= {MIN_COMPRESSION:g}x through slate merging ({label(biggest['impressions'])})",
        f"{compression:.1f}x",
        compression >= MIN_COMPRESSION,
    ))
    return rows


def render(results: list[dict], host: dict, commands: list[str], total_seconds: float) -> str:
    results = sorted(results, key=lambda r: r["impressions"])
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py`; every number below comes from the run whose commands are listed at the end. "
        "Each size runs in a fresh process (a fresh JVM) on `conf/scale.yaml`: a Zipf log in which each query "
        "repeats its usual slate except for a 5% share of randomised requests. References run in the same process "
        "on the same input, right after the stage they are compared with.",
        "",
        f"- Machine: {host['cpu']}, {results[0]['cores']} cores, {host['memory']} memory; Python {host['python']}; {host['java']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in host["versions"].items()),
        f"- Whole run: {total_seconds / 60:.1f} min",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets(results)]
    lines += [
        "",
        "## Wall time per stage (seconds) and cost per impression",
        "",
        "Cost is core-microseconds per impression of the log (wall time x cores / impressions). The JVM start is "
        "measured apart and is in no stage. DuckDB runs the same transformation as build-examples "
        "(`bench/duckdb_reference.py`: the same rules counted, the same merged rows, written to Parquet) with "
        "as many threads as there are cores.",
        "",
        "| impressions | JVM start | simulate | build-examples | DuckDB | build-examples / DuckDB | train | score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["seconds"]
        if "error" in r["duckdb"]:
            duck = f"failed ({r['duckdb']['error'][:80]}) | -"
        else:
            duck = f"{r['duckdb']['seconds']:.1f} | {s['build_examples'] / r['duckdb']['seconds']:.2f}x"
        lines.append(
            f"| {label(r['impressions'])} | {s['jvm_start']:.1f} | {s['simulate']:.1f} | {s['build_examples']:.1f} | "
            f"{duck} | {s['train']:.1f} | {s['score']:.1f} |"
        )
    lines += ["", "| impressions | " + " | ".join(f"{s} (core-us/imp.)" for s in STAGES) + " |",
              "|---" * (len(STAGES) + 1) + "|"]
    for r in results:
        lines.append(f"| {label(r['impressions'])} | " + " | ".join(f"{cost_per_impression(r, s):.2f}" for s in STAGES) + " |")
    lines += [
        "",
        "## Slate merging",
        "",
        "| impressions | requests | example rows | compression (requests per row) | (query, item) pairs in several slots |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        e = r["examples"]
        lines.append(
            f"| {label(r['impressions'])} | {e['requests']:,} | {e['examples']:,} | {e['compression']:.1f}x | "
            f"{e['share_of_pairs_in_several_slots']:.1%} |"
        )
    lines += [
        "",
        "## Peak resident memory per process (MiB)",
        "",
        "The peak of any one process of each role during the stage. In local mode the JVM is both the driver and the "
        "executors: its resident size grows with the shuffles towards its heap (`spark.driver.memory`, 4 GB here) "
        "plus off-heap buffers, and Spark spills beyond that. The driver's Python process is what would grow if "
        "anything were collected to the driver.",
        "",
        "| impressions | stage | driver (Python) | JVM | Spark Python worker | training process |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for stage in ("jvm_start",) + STAGES + ("duckdb_examples",):
            m = r["memory"].get(stage)
            if m:
                cells = [f"{m[f'{role}_peak_bytes'] / MIB:,.0f}" if m[f"{role}_count"] else "-" for role in ROLES]
                lines.append(f"| {label(r['impressions'])} | {stage} | " + " | ".join(cells) + " |")
    lines += ["", "DuckDB runs inside the driver's Python process, so its memory shows in that column.", ""]
    for r in results:
        if "training_throughput" in r:
            t = r["training_throughput"]
            lines += [
                f"## Training throughput ({label(r['impressions'])} impressions, {t['examples_rows']:,} example rows)",
                "",
                f"One process, {t['torch_threads']} torch thread, model `{t['model']}`, batch {t['batch_size']} slates, "
                f"{t['steps']} timed steps after a warm-up, the same `train_step` in all three, {t.get('rounds', 1)} "
                "alternating rounds (medians). `train.input=auto` chose "
                f"**{t['input_chosen']}**: {t['input_reason']}.",
                "",
                "| fed by | slates per second | ratio to in-memory (each round) |",
                "|---|---|---|",
                f"| train.input=stream: Petastorm (examples table -> cache -> BatchedDataLoader, prefetch thread) | "
                f"{t['petastorm_slates_per_s']:,.0f} | {t['ratio']:.2f} ({', '.join(f'{x:.2f}' for x in t['ratios'])}) |",
                f"| train.input=memory: the cache's files read once with pyarrow into tensors "
                f"({t['memory_input_load_seconds']:.1f} s), shuffled there | {t['memory_input_slates_per_s']:,.0f} | "
                f"{t['memory_input_ratio']:.2f} ({', '.join(f'{x:.2f}' for x in t['memory_input_ratios'])}) |",
                f"| reference: tensors built here from the examples (toPandas) | {t['in_memory_slates_per_s']:,.0f} | 1 |",
                "",
            ]
        if "score_throughput" in r:
            s = r["score_throughput"]
            lines += [
                f"## Scoring throughput ({s['rows']:,} rows of the {label(r['impressions'])} log)",
                "",
                "| scored by | seconds | rows per second |",
                "|---|---|---|",
                f"| Spark: Delta -> mapInArrow (2 Python workers, 1 torch thread each) -> Delta | {s['spark_seconds']:.1f} | {s['spark_rows_per_s']:,.0f} |",
                f"| plain PyTorch: pyarrow -> relevance tower ({s['torch_threads']} threads) -> Parquet | {s['torch_seconds']:.1f} | {s['torch_rows_per_s']:,.0f} |",
                f"| ratio | | {s['ratio']:.2f} |",
                "",
                "The same two without writing the output (Spark's `noop` sink; no Parquet writer):",
                "",
                "| scored by | seconds | rows per second |",
                "|---|---|---|",
                f"| Spark | {s['spark_seconds_without_write']:.1f} | {s['rows'] / s['spark_seconds_without_write']:,.0f} |",
                f"| plain PyTorch | {s['torch_seconds_without_write']:.1f} | {s['rows'] / s['torch_seconds_without_write']:,.0f} |",
                f"| ratio | | {s['ratio_without_write']:.2f} |",
                f"| profile: the Python workers read the log's Parquet files themselves (no JVM-to-Python leg) | "
                f"{s['python_reads_files_seconds_without_write']:.1f} | "
                f"{s['rows'] / s['python_reads_files_seconds_without_write']:,.0f} |",
                "",
                f"Arrow batches of {s['batch_size']:,} rows (`score.batch_size`). The Delta write keeps statistics of "
                "the filter column only (`model`; the scores table: run id, pairs source and model).",
                "",
            ]
    lines += ["## Commands", "", "```"] + commands + ["```", ""]
    return "\n".join(lines)


SCALING_BEGIN = "<!-- per-core figures: written by bench/run.py, do not edit -->"
SCALING_END = "<!-- end of the per-core figures -->"


def per_core_figures(results: list[dict], library: dict | None = None) -> str:
    """The block of docs/scaling.md that bench/run.py rewrites: each stage's cost per core at
    the largest size, the training and scoring rates per core, and the one-core comparison."""
    results = sorted(results, key=lambda r: r["impressions"])
    big = results[-1]
    lines = [
        SCALING_BEGIN,
        f"From the latest `bench/run.py` run ([benchmarks.md](benchmarks.md)), at {label(big['impressions'])} impressions, "
        f"the largest size, on {big['cores']} cores:",
        "",
        "| stage | core-us per impression | impressions per core-second |",
        "|---|---|---|",
    ]
    for stage in STAGES[1:]:
        cost = cost_per_impression(big, stage)
        lines.append(f"| {stage} | {cost:.2f} | {1e6 / cost:,.0f} |")
    for r in results:
        t, sc = r.get("training_throughput"), r.get("score_throughput")
        if t:
            rate = t["memory_input_slates_per_s"] if t["input_chosen"] == "memory" else t["petastorm_slates_per_s"]
            lines.append(
                f"\nTraining ({label(r['impressions'])}): {rate:,.0f} slates per second per process of one torch thread "
                f"(`{t['model']}`, batch {t['batch_size']}, input {t['input_chosen']})."
            )
        if sc:
            lines.append(
                f"Scoring ({label(r['impressions'])}): {sc['spark_rows_per_s'] / r['cores']:,.0f} rows per core-second in "
                f"Spark, Delta write included ({sc['torch_rows_per_s'] / r['cores']:,.0f} in plain PyTorch)."
            )
    if library:
        lines.append("\nOn one core, against a click-model library (benchmarks.md, \"Against a click-model library\"):\n")
        lines.append(library_per_core(library))
    lines.append(SCALING_END)
    return "\n".join(lines)


def library_per_core(library: dict) -> str:
    """One line per contender of the one-core comparison (bench.click_library.figures)."""
    from bench.click_library import figures

    f = figures(library)
    names = {
        "library_own": "the library (clax-models), its own loader: sessions trained",
        "library_memory": "the library, batches prepared in memory: sessions trained",
        "ulr_train": "ulr-spark's train stage: sessions trained",
        "ulr_whole": "ulr-spark's whole job (build-examples + train + score): log sessions",
    }
    return "\n".join(f"- {text}: {f[key]['rate']:,.0f} per core-second" for key, text in names.items())


def replace_block(text: str, block: str) -> str:
    """``text`` with the generated block replaced, or appended when it has none yet."""
    if SCALING_BEGIN in text and SCALING_END in text:
        head, rest = text.split(SCALING_BEGIN, 1)
        return head + block + rest.split(SCALING_END, 1)[1]
    return text.rstrip("\n") + "\n\n## Per-core figures\n\n" + block + "\n"
