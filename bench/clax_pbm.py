"""Train the click-model library's PBM (clax-models) on the benchmark's session-per-row Parquet.

Runs in the library's own virtual environment (it needs a newer pyarrow than ulr-spark's), so
it imports nothing of ulr_spark or bench; bench/click_library.py starts it pinned to one core:

    .venv-clax/bin/python bench/clax_pbm.py --data DIR --mode own --epochs 3 --json OUT.json

``--mode own``: the library's loader (``clax.datasets.YandexDataset``, a PyTorch
``IterableDataset`` over the Parquet files, batched by a ``DataLoader`` with its collate
function) fed to ``clax.Trainer.train``. ``--mode memory``: the same Parquet read by pyarrow
into arrays, cut into batches of device arrays before the clock starts, fed to the same
``Trainer.train``. The timed part is ``Trainer.train`` (its jit compilation included); its
validation loader is one batch, so validation costs next to nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import metadata


def versions() -> dict:
    out = {}
    for package in ("clax-models", "jax", "jaxlib", "flax", "optax", "torch", "pyarrow", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


def memory_batches(data: str, sessions: int, batch_size: int) -> list:
    """Every batch of the Parquet files as device arrays, in the layout the library's collate
    function gives (query_doc_ids, positions, mask, clicks, n)."""
    import glob

    import jax
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(glob.glob(os.path.join(data, "part-*.parquet"))), columns=["query_doc_ids", "clicks"])
    table = table.slice(0, sessions)
    shown = len(table["query_doc_ids"][0])
    docs = table["query_doc_ids"].combine_chunks().flatten().to_numpy().astype(np.int32).reshape(-1, shown)
    clicks = table["clicks"].combine_chunks().flatten().to_numpy().astype(np.float16).reshape(-1, shown)
    positions = np.arange(1, shown + 1, dtype=np.int16)
    batches = []
    for start in range(0, docs.shape[0], batch_size):
        stop = min(docs.shape[0], start + batch_size)
        rows = stop - start
        batches.append(jax.device_put({
            "query_doc_ids": docs[start:stop],
            "positions": np.broadcast_to(positions, (rows, shown)).copy(),
            "mask": np.ones((rows, shown), dtype=bool),
            "clicks": clicks[start:stop],
            "n": np.full(rows, shown, dtype=np.int16),
        }))
    return batches


def own_loader(data: str, sessions: int, batch_size: int):
    from clax.datasets import YandexDataset
    from torch.utils.data import DataLoader

    dataset = YandexDataset(data, session_range=(0, sessions))
    return DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate_fn)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder of part-*.parquet, one row per session")
    parser.add_argument("--mode", choices=("own", "memory"), required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--pairs", type=int, required=True, help="number of (query, doc) pairs (ids 1..pairs)")
    parser.add_argument("--positions", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--learning-rate", type=float, default=0.003)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import torch
    from clax import PositionBasedModel, Trainer
    from flax import nnx
    from flax.training.early_stopping import EarlyStopping
    from optax import adamw

    torch.set_num_threads(1)
    model = PositionBasedModel(positions=args.positions, query_doc_pairs=args.pairs, rngs=nnx.Rngs(args.seed))
    # A fixed number of epochs, as ulr-spark is run: patience beyond the last epoch never stops early.
    trainer = Trainer(optimizer=adamw(args.learning_rate), epochs=args.epochs,
                      early_stopping=EarlyStopping(patience=args.epochs + 1, min_delta=1e-5))
    prepared = None
    started = time.perf_counter()
    if args.mode == "memory":
        train_loader = memory_batches(args.data, args.sessions, args.batch_size)
        validation = train_loader[:1]
    else:
        train_loader = own_loader(args.data, args.sessions, args.batch_size)
        validation = own_loader(args.data, args.batch_size, args.batch_size)
    prepared = time.perf_counter() - started
    started = time.perf_counter()
    history = trainer.train(model, train_loader, validation)
    seconds = time.perf_counter() - started
    examination = model.examination.prob({"positions": jnp.arange(1, args.positions + 1)})
    result = {
        "mode": args.mode, "sessions": args.sessions, "epochs": args.epochs, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "optimizer": "optax.adamw", "seconds": seconds, "prepare_seconds": prepared,
        "sessions_per_second": args.sessions * args.epochs / seconds,
        "examination": [float(v) for v in jax.device_get(examination)],
        "train_loss": [float(v) for v in history.get("train_loss", [])],
        "versions": versions(), "devices": [str(d) for d in jax.devices()],
        "affinity": sorted(os.sched_getaffinity(0)), "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    with open(args.json, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"clax_pbm {args.mode}: {seconds:.1f}s, {result['sessions_per_second']:,.0f} sessions/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
