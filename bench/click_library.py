"""ulr-spark against a gradient-based click-model library (clax-models), on one core.

    .venv/bin/python -m bench.click_library --root DIR --json OUT.json [--sessions 1000000]

1. A seeded PBM log (bench/click_log.py): 1,000 queries x 20 documents, 10 shown per session in
   a random order, ids only; written as ulr-spark's impression log (``DIR/log``) and as the
   library's session-per-row Parquet (``DIR/sessions``).
2. The library's PBM (``clax.PositionBasedModel`` trained by ``clax.Trainer``), in its own
   virtual environment (``.venv-clax``, created when missing: it needs a newer pyarrow than
   ulr-spark's), run by bench/clax_pbm.py: from its own loader, then from batches prepared in memory.
3. ulr-spark (bench/click_library_ulr.py, a fresh process and JVM, ``local[1]``, one training
   process with one torch thread): build-examples, train, score on conf/bench_click_library.yaml.

Every process runs pinned to one core (``taskset -c 0``) with single-threaded BLAS/OpenMP and
XLA. Both sides train the same number of epochs over every session. The examination curves are
compared with the truth as ulr-spark's evaluation does (bench.click_log.curve_error).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.click_log import DOCS_PER_QUERY, QUERIES, SHOWN, curve_error, generate, write_impressions, write_sessions  # noqa: E402

LIBRARY_VENV = os.path.join(ROOT, ".venv-clax")
# clax-models 0.1.1 asks for flax < 0.12; flax 0.11.2 does not import under jax 0.10 (jax removed
# jax._src.core.mutable_array), so jax is pinned to a release of flax 0.11's time.
LIBRARY_PINS = ("clax-models==0.1.1", "flax==0.11.2", "jax==0.7.2", "jaxlib==0.7.2")
CORE = "0"
SINGLE_THREAD = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}


def ensure_library_venv(venv: str = LIBRARY_VENV) -> str:
    """The library's interpreter; the virtual environment is created and installed when missing."""
    python = os.path.join(venv, "bin", "python")
    probe = [python, "-c", "import clax, flax.nnx"]
    if os.path.exists(python) and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"bench.click_library: installing {' '.join(LIBRARY_PINS)} into {venv}", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *LIBRARY_PINS], check=True)
    subprocess.run(probe, check=True)
    return python


def pinned(command: list[str]) -> list[str]:
    return (["taskset", "-c", CORE] if shutil.which("taskset") else []) + command


def run_pinned(command: list[str], log_path: str, commands: list[str], lock: str = "") -> float:
    """Run ``command`` on one core (under ``flock lock`` when given: on a shared machine, no
    other timed run at once), its output to ``log_path``; returns its wall seconds."""
    env = {**os.environ, **SINGLE_THREAD, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    full = pinned(command)
    commands.append(" ".join(shlex.quote(c) for c in full))
    full = (["flock", lock] if lock else []) + full
    started = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run(full, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        raise RuntimeError(f"{full} failed ({done.returncode}); the end of {log_path}:\n{tail}")
    return time.perf_counter() - started


def run(args) -> dict:
    os.makedirs(args.root, exist_ok=True)
    commands: list[str] = []
    started = time.perf_counter()
    log = generate(args.sessions, args.seed)
    for folder in ("log", "sessions"):
        shutil.rmtree(os.path.join(args.root, folder), ignore_errors=True)
    impressions = write_impressions(log, os.path.join(args.root, "log"))
    write_sessions(log, os.path.join(args.root, "sessions"))
    truth = [float(v) for v in log.examination]
    result: dict = {
        "sessions": log.sessions, "impressions": impressions, "queries": QUERIES, "documents_per_query": DOCS_PER_QUERY,
        "shown": SHOWN, "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size, "cores": 1,
        "true_examination": truth, "generate_seconds": time.perf_counter() - started, "commands": commands,
    }
    library_python = ensure_library_venv(args.library_venv)
    library = {}
    for mode in ("own", "memory"):
        out = os.path.join(args.root, f"clax_{mode}.json")
        run_pinned([
            library_python, os.path.join("bench", "clax_pbm.py"), "--data", os.path.join(args.root, "sessions"), "--mode", mode,
            "--sessions", str(log.sessions), "--pairs", str(QUERIES * DOCS_PER_QUERY), "--positions", str(SHOWN),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--learning-rate", str(args.library_learning_rate),
            "--json", out,
        ], os.path.join(args.root, f"clax_{mode}.log"), commands, args.lock)
        with open(out) as handle:
            library[mode] = json.load(handle)
        library[mode]["curve_error"] = curve_error(library[mode]["examination"], truth)
    result["library"] = library
    result["versions"] = library["own"]["versions"]
    out = os.path.join(args.root, "ulr.json")
    overrides = [f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", *args.set]
    run_pinned(
        [sys.executable, "-m", "bench.click_library_ulr", "--root", args.root, "--json", out, "--config", args.config]
        + [a for o in overrides for a in ("--set", o)],
        os.path.join(args.root, "ulr.log"), commands, args.lock,
    )
    with open(out) as handle:
        result["ulr"] = json.load(handle)
    result["total_seconds"] = time.perf_counter() - started
    return result


def figures(result: dict) -> dict:
    """Per-core figures: training as sessions trained (sessions x epochs) per core-second, the
    whole job as sessions of the log per core-second."""
    n, epochs, cores = result["sessions"], result["epochs"], result["cores"]
    u, lib = result["ulr"], result["library"]
    s = u["seconds"]
    whole = s["jvm_start"] + s["build_examples"] + s["train"] + s["score"]
    return {
        "library_own": {"seconds": lib["own"]["seconds"], "rate": n * epochs / (lib["own"]["seconds"] * cores), "error": lib["own"]["curve_error"]},
        "library_memory": {"seconds": lib["memory"]["seconds"], "rate": n * epochs / (lib["memory"]["seconds"] * cores),
                           "error": lib["memory"]["curve_error"]},
        "ulr_train": {"seconds": s["train"], "rate": n * epochs / (s["train"] * cores), "error": u["curve_error"]},
        "ulr_loop": {"seconds": u["train_breakdown"]["training_loop"], "rate": n * epochs / (u["train_breakdown"]["training_loop"] * cores)},
        "ulr_whole": {"seconds": whole, "rate": n / (whole * cores), "error": u["curve_error"]},
    }


def render_click_library(result: dict) -> str:
    """The Markdown section of the report: the table, the two targets, the whole job and what bounds it."""
    f = figures(result)
    u = result["ulr"]
    s, b = u["seconds"], u["train_breakdown"]
    ratio = f["ulr_train"]["rate"] / f["library_own"]["rate"]
    closer = f["ulr_train"]["error"] <= f["library_own"]["error"]
    v = result.get("versions", {})
    lines = [
        "## Against a click-model library, on one core",
        "",
        f"A PBM log of {result['sessions']:,} sessions of {result['shown']} results ({result['impressions']:,} impressions; "
        f"{result['queries']:,} queries x {result['documents_per_query']} documents, ids only, each session showing "
        f"{result['shown']} of its query's documents in a random order; examination 1/rank^0.7). The library is "
        f"clax-models {v.get('clax-models', '?')} (jax {v.get('jax', '?')}, flax {v.get('flax', '?')}): its PBM trained by "
        f"its `Trainer` with adamw at {result['library']['own']['learning_rate']:g} from its own session-per-row Parquet. "
        f"ulr-spark runs `local[1]` with one training process and one torch thread, model `{u['model']}` with the "
        "(query, document) pair as a hashed id feature (`conf/bench_click_library.yaml`). Every process is pinned to one "
        f"core (`taskset -c {CORE}`, one BLAS/OpenMP/XLA thread); both train {result['epochs']} epochs of every session "
        f"in batches of {result['batch_size']}. Sessions trained per core-second = sessions x epochs / (seconds x cores); "
        "the curve error is ulr-spark's bias-curve error (mean over ranks 2-10 of the relative error of the curve "
        "normalised to rank 1).",
        "",
        "| run | seconds | sessions trained per core-second | log sessions per core-second | curve error |",
        "|---|---|---|---|---|",
    ]
    n = result["sessions"]
    rows = (
        ("library, its own loader (Parquet -> DataLoader -> Trainer)", "library_own"),
        ("library, batches prepared in memory (preparation not timed)", "library_memory"),
        ("ulr-spark train stage (examples table -> Petastorm -> TorchDistributor -> curves)", "ulr_train"),
        ("ulr-spark training loop alone (inside the train stage)", "ulr_loop"),
    )
    for name, key in rows:
        x = f[key]
        error = f"{x['error']:.4f}" if "error" in x and x["error"] is not None else "-"
        lines.append(f"| {name} | {x['seconds']:.1f} | {x['rate']:,.0f} | {n / x['seconds']:,.0f} | {error} |")
    w = f["ulr_whole"]
    lines.append(f"| ulr-spark whole job (JVM start + build-examples + train + score) | {w['seconds']:.1f} | - | {w['rate']:,.0f} | {w['error']:.4f} |")
    lines += [
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| train stage faster per core-second than the library's own loader | {ratio:.2f}x ({f['ulr_train']['rate']:,.0f} vs "
        f"{f['library_own']['rate']:,.0f} sessions trained per core-second) | {'yes' if ratio >= 1 else '**no**'} |",
        f"| examination curve at least as close to the truth | {f['ulr_train']['error']:.4f} vs {f['library_own']['error']:.4f} | "
        f"{'yes' if closer else '**no**'} |",
        "",
        f"**The whole job**: {w['rate']:,.0f} log sessions per core-second ({w['seconds']:.1f} s for {n:,} sessions). "
        + ", ".join(f"{label} {s[key]:.1f} s ({s[key] / w['seconds']:.0%})" for label, key in (
            ("JVM start", "jvm_start"), ("build-examples", "build_examples"), ("train", "train"), ("score", "score")))
        + f". Within train, the training loop is {b['training_loop']:.1f} s; the rest is fixed work "
        "around it:",
        "",
        "| part of the train stage | seconds |",
        "|---|---|",
    ]
    labels = {
        "describe_examples": "shape of the examples (aggregations)", "count_rows": "training rows (one aggregation)",
        "validation_arrays": "validation split (its slates collected, if any)", "petastorm_cache": "Petastorm cache (examples materialised)",
        "curve_sample": "page sample for the curves", "torchrun_start_and_exit": "TorchDistributor/torchrun start and exit",
        "training_loop": "training loop (loader start, steps)", "curves": "curves read from the model",
        "write_curves": "bias_curves written", "other": "the rest (table version, encoder, context count, layout, publish)",
    }
    for key, text in labels.items():
        if key in b:
            lines.append(f"| {text} | {b[key]:.1f} |")
    lines += ["", "Commands (each pinned to one core):", "", "```"] + result["commands"] + ["```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(ROOT, "ulr-data", "click_library"))
    parser.add_argument("--json", required=True)
    parser.add_argument("--markdown", default="", help="also write the report section here")
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--library-learning-rate", type=float, default=0.003, help="adamw's rate (the library README's)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--config", default="conf/bench_click_library.yaml")
    parser.add_argument("--set", action="append", default=[], help="ulr-spark config override section.key=value")
    parser.add_argument("--library-venv", default=LIBRARY_VENV)
    parser.add_argument("--lock", default="", help="run each timed process under `flock LOCK` (a machine shared with other runs)")
    args = parser.parse_args(argv)
    args.root = os.path.abspath(args.root)
    result = run(args)
    result["commands"].insert(0, ".venv/bin/python -m bench.click_library " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    with open(args.json, "w") as handle:
        json.dump(result, handle, indent=2)
    section = render_click_library(result)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
