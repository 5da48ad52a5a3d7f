"""Items added in real time: how the vector ``Recommender.observe`` gives a new item from its
first users compares with a refit that saw the same events. Quality, not speed.

ml-100k (from ../shared/datasets; skipped with the reason when absent), ratings >= 4 as
implicit positives. 60 items with at least 60 such users are taken out of training; each
one's events then arrive in time order, one ``observe`` call each, and its first
``new_item_users`` (20) users set its vector (ALS: the exact solve of its system against
their vectors; BPR: the mean of their vectors). Its later users are held out. For each
model, the served vectors against the same model refitted on the training set plus the
first users' events (what a retrain would give):

- ``auc``: over the held-out (user, item) pairs, the fraction of the user's unseen items
  that score below the new item;
- ``shown``: how many of all users' top-50 slots (every user, their training and first-user
  items excluded) hold one of the 60 new items, and ``hits``: how many of those are
  held-out pairs (a vector that floods the lists shows many with few hits).

    python bench/bench_new_items.py          # a few seconds

Prints a table, writes bench/results/new_items.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np
import scipy.sparse as sp

import recfuse

from bench_args import check_writable, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "datasets", "ml-100k", "u.data")
RESULTS = os.path.join(HERE, "results")
NEW_ITEMS, MIN_USERS, FIRST_USERS, TOP = 60, 60, 20, 50
MODELS = {
    "ALS": lambda: recfuse.ALS(factors=64, iterations=15, regularization=0.05, alpha=5.0,
                               random_state=0),
    "BPR": lambda: recfuse.BPR(factors=64, iterations=100, random_state=0),
}


def split():
    """(training matrix, the new items' events in time order as (user, item) arrays, number
    of users): the new items renumbered after the kept ones."""
    raw = np.loadtxt(DATA, dtype=np.int64)
    raw = raw[raw[:, 2] >= 4]
    users, items, times = raw[:, 0] - 1, raw[:, 1] - 1, raw[:, 3]
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    counts = np.bincount(items, minlength=n_items)
    rng = np.random.default_rng(0)
    new = rng.choice(np.flatnonzero(counts >= MIN_USERS), NEW_ITEMS, replace=False)
    kept = np.setdiff1d(np.arange(n_items), new)
    renumbered = np.empty(n_items, dtype=np.int64)
    renumbered[kept] = np.arange(kept.size)
    renumbered[new] = kept.size + np.arange(new.size)
    items = renumbered[items]
    old = items < kept.size
    train = sp.csr_matrix((np.ones(old.sum(), np.float32), (users[old], items[old])),
                          shape=(n_users, kept.size))
    order = np.argsort(times[~old], kind="stable")
    return train, users[~old][order], items[~old][order]


def quality(lists, n_users: int, held_out: list, first_new: int) -> dict:
    """auc, shown, hits (module docstring) of ``lists(users, k)``: every user's full list of
    the items not excluded (ids, best first, padded with -1), as recommend answers."""
    ids = lists(np.arange(n_users), first_new + NEW_ITEMS)
    auc = []
    for user, item in held_out:
        row = ids[user][ids[user] >= 0]
        below = row.size - 1 - int(np.flatnonzero(row == item)[0])  # the items it beats
        auc.append(below / (row.size - 1))
    top = ids[:, :TOP]
    at_user, at_slot = np.nonzero(top >= first_new)
    shown = list(zip(at_user.tolist(), top[at_user, at_slot].tolist()))
    held = set(held_out)
    return {"auc": float(np.mean(auc)), "shown": len(shown),
            "hits": sum(pair in held for pair in shown)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,  # no options: --help answers
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    results_path = check_writable(os.path.join(RESULTS, "new_items.json"), parser)
    if not os.path.isfile(DATA):
        print(f"skipped: ml-100k not found at {os.path.normpath(DATA)}")
        return 0
    train, users, items = split()
    n_users, kept = train.shape
    report = {"data": f"ml-100k >= 4: {n_users} users x {kept} items + {NEW_ITEMS} new",
              "first_users": FIRST_USERS, "top": TOP, "models": {},
              "versions": {"recfuse": recfuse.__version__, "numpy": np.__version__,
                           "python": platform.python_version()}}
    print(f"{report['data']}; each new item's first {FIRST_USERS} users observed in time "
          f"order, the rest held out\n")
    print("| model | vectors | auc | new items in top-50 slots | of them held-out pairs |")
    print("|---|---|---:|---:|---:|")
    for name, make in MODELS.items():
        model = make().fit(train)
        recommender = recfuse.Recommender(model, new_item_users=FIRST_USERS, num_threads=1)
        first, held_out = {}, []
        for user, item in zip(users.tolist(), items.tolist()):
            owners = first.setdefault(item, [])
            if len(owners) < FIRST_USERS:
                owners.append(user)
                recommender.observe({"user": [user], "item": [item]})
            else:
                held_out.append((user, item))
        pairs = [(user, item) for item, owners in first.items() for user in owners]
        rows = np.r_[train.nonzero()[0], [p[0] for p in pairs]]
        cols = np.r_[train.nonzero()[1], [p[1] for p in pairs]]
        seen = sp.csr_matrix((np.ones(rows.size), (rows, cols)),
                             shape=(n_users, kept + NEW_ITEMS))
        refit = make().fit(seen.astype(np.float32))
        results = {
            "served": quality(lambda ids, k: recommender.recommend_batch(ids, k=k).ids,
                              n_users, held_out, kept),
            "refit": quality(lambda ids, k: refit.recommend(ids, user_items=seen, k=k)[0],
                             n_users, held_out, kept)}
        report["models"][name] = dict(results, held_out=len(held_out))
        for kind, result in results.items():
            print(f"| {name} | {kind} | {result['auc']:.3f} | {result['shown']:,} of "
                  f"{n_users * TOP:,} | {result['hits']:,} |", flush=True)
    write_json(results_path, report, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
