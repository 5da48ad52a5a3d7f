"""The ``recfuse`` command: ``recfuse demo`` runs the chain on synthetic data, ``recfuse info``
prints the backends, ``recfuse serve MODEL`` serves a model file over HTTP."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def _info(args) -> int:
    import recfuse

    rows = recfuse.backends()
    print(f"recfuse {recfuse.__version__}  (python {sys.version.split()[0]}, numpy {np.__version__})")
    chosen = recfuse.resolve_backend("auto").NAME
    width = max(len(r.name) for r in rows)
    print(f"\n{'backend':<{width}}  available  detail")
    for row in rows:
        mark = "yes" if row.available else "no"
        star = "  <- auto" if row.name == chosen else ""
        print(f"{row.name:<{width}}  {mark:<9}  {row.detail}{star}")
    try:
        from recfuse import _core

        print(f"\nCPU SIMD levels: {', '.join(_core.supported_simd_levels())} "
              f"(in use: {_core.simd_level()}; force with RECFUSE_SIMD=generic|avx2|avx512)")
    except ImportError:
        pass
    print(f"CPU threads: {os.cpu_count()}; choose a backend with backend=... or RECFUSE_BACKEND")
    return 0


def _popularity_metrics(train, test, k: int) -> dict[str, float]:
    """precision/ndcg@k of recommending the most popular unseen items (the baseline)."""
    from .metrics import ranking_metrics_at_k

    class Popularity:
        popularity = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float32)

        def recommend(self, users, user_items, k, filter_seen=True):
            from ._topk.numpy_backend import select_topk

            scores = np.tile(self.popularity, (len(users), 1))
            allowed = np.ones_like(scores, dtype=bool)
            seen = user_items.tocoo()
            allowed[seen.row, seen.col] = False
            return select_topk(scores, k, allowed)

    return ranking_metrics_at_k(Popularity(), train, test, k=k)


def _demo(args) -> int:
    import recfuse
    from recfuse import datasets
    from recfuse.metrics import ranking_metrics_at_k

    say = (lambda *a, **kw: None) if args.json else print
    started = time.perf_counter()
    say(f"recfuse demo: synthetic implicit feedback, {args.users} users x {args.items} items, "
        f"{args.nnz} interactions (seed {args.seed})")
    matrix = datasets.synthetic_implicit(args.users, args.items, args.nnz, seed=args.seed)
    train, test = datasets.train_test_split_per_user(matrix, 0.2, seed=args.seed)
    say(f"  data: {matrix.nnz} stored entries; split 80/20 per user -> train {train.nnz}, "
        f"test {test.nnz}  [{time.perf_counter() - started:.2f} s]")

    model = recfuse.ALS(factors=args.factors, iterations=args.iterations, regularization=0.05,
                        alpha=args.alpha, backend=args.backend, random_state=args.seed)
    losses = []
    fit_start = time.perf_counter()
    model.fit(train, show_progress=not args.json,
              callback=lambda it, loss: losses.append(loss))
    fit_seconds = time.perf_counter() - fit_start
    say(f"  ALS: {args.factors} factors, {args.iterations} iterations on backend "
        f"'{model.backend_used}' in {fit_seconds:.2f} s; training loss "
        f"{losses[0]:.5f} -> {losses[-1]:.5f}" if losses else "")

    k = 10
    eval_start = time.perf_counter()
    als_metrics = ranking_metrics_at_k(model, train, test, k=k)
    baseline = _popularity_metrics(train, test, k)
    say(f"  evaluation on held-out interactions (seen items filtered), "
        f"[{time.perf_counter() - eval_start:.2f} s]:")
    say(f"    {'model':<12} {'precision@10':>13} {'ndcg@10':>9}")
    say(f"    {'popularity':<12} {baseline['precision']:>13.4f} {baseline['ndcg']:>9.4f}")
    say(f"    {'ALS':<12} {als_metrics['precision']:>13.4f} {als_metrics['ndcg']:>9.4f}")

    user = int(np.argmax(np.diff(test.indptr)))
    ids, scores = model.recommend(user, train[user], k=5)
    held_out = set(test.indices[test.indptr[user]:test.indptr[user + 1]].tolist())
    say(f"  top 5 for user {user} (* = in the user's held-out interactions):")
    for item, score in zip(ids, scores):
        say(f"    item {int(item):>6}  score {float(score):.4f}{' *' if int(item) in held_out else ''}")
    total = time.perf_counter() - started
    say(f"done in {total:.2f} s")
    if args.json:
        print(json.dumps({
            "backend": model.backend_used, "fit_seconds": fit_seconds, "losses": losses,
            "als": als_metrics, "popularity": baseline, "total_seconds": total,
        }))
    return 0


def _serve(args) -> int:
    from .serving import Recommender

    try:
        from .server import Limits, serve
    except ImportError as error:
        print(f"recfuse serve: {error}", file=sys.stderr)
        return 2
    recommender = Recommender(args.model, candidates=args.candidates, k=args.k,
                              unknown_items=args.unknown_items, num_threads=args.threads)
    limits = Limits(max_k=args.max_k, max_batch=args.max_batch,
                    max_body_bytes=args.max_body_bytes, batch_wait=args.batch_wait_ms / 1000,
                    workers=args.workers)
    info = recommender.info()
    print(f"recfuse serve: {info['kind']} model {args.model} ({info['users']} users x "
          f"{info['items']} items) on http://{args.host}:{args.port}", file=sys.stderr)
    serve(recommender, host=args.host, port=args.port, model_path=args.model, limits=limits)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recfuse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train and evaluate ALS on an embedded synthetic dataset")
    demo.add_argument("--users", type=int, default=20_000)
    demo.add_argument("--items", type=int, default=5_000)
    demo.add_argument("--nnz", type=int, default=500_000)
    demo.add_argument("--factors", type=int, default=64)
    demo.add_argument("--iterations", type=int, default=10)
    demo.add_argument("--alpha", type=float, default=2.0)
    demo.add_argument("--backend", default="auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    demo.set_defaults(run=_demo)

    serve = commands.add_parser("serve", help="serve a model file over HTTP (needs the serve extra)")
    serve.add_argument("model", help="a model file written by model.save()")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--k", type=int, default=10, help="list length when a request gives none")
    serve.add_argument("--candidates", type=int, default=200)
    serve.add_argument("--unknown-items", choices=("add", "reject"), default="add",
                       help="what /events does with item ids the model lacks")
    serve.add_argument("--max-k", type=int, default=1000)
    serve.add_argument("--max-batch", type=int, default=256, help="users per /recommend request")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20)
    serve.add_argument("--batch-wait-ms", type=float, default=1.0,
                       help="how long a micro-batch may wait for requests being read")
    serve.add_argument("--workers", type=int, default=2, help="threads answering batches")
    serve.add_argument("--threads", type=int, default=None,
                       help="CPU threads per native call (default: 1 below 100,000 items, else all)")
    serve.set_defaults(run=_serve)

    info = commands.add_parser("info", help="print the backends and why any is unavailable")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as error:
        print(f"recfuse {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
