"""Train a ranking MLP in PyTorch and serve it with recfuse (``MLPScorer.from_torch``).

The chain: ALS factors recall 200 candidates per user, an MLP over
[user factors | item factors | ALS score, item popularity] ranks them, the top 10 are kept.
The MLP is trained in PyTorch (binary cross-entropy: the user's training items against
items ALS recalled for the user), then imported with ``MLPScorer.from_torch``; recfuse
gathers the rows by id, runs the layers and keeps the top 10 in one native call, in float32
or bfloat16.

    pip install torch          # CPU is enough
    python examples/torch_ranker.py [--users 3000] [--epochs 3] [--precision bfloat16]

It prints the precision@10 of ALS alone and of ALS + the MLP on held-out interactions,
and checks that recfuse's scores equal PyTorch's.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import recfuse
from recfuse import datasets, metrics, split

FACTORS, RECALL, K = 32, 200, 10


def candidate_features(user_factors, item_factors, popularity, users, items) -> np.ndarray:
    """Two features per (user, candidate): the ALS score and the item's log popularity."""
    score = np.einsum("ij,ij->i", user_factors[users], item_factors[items])
    return np.stack([score, np.log1p(popularity[items])], 1).astype(np.float32)


def train_mlp(train, recalled, user_factors, item_factors, popularity, *, epochs: int,
              seed: int):
    """An nn.Sequential that tells a user's training items (label 1) from the unseen items
    ALS recalled for the user (label 0): the choice it makes when ranking."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    users = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    positives = train.indices
    model = torch.nn.Sequential(torch.nn.Linear(2 * FACTORS + 2, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 1))  # a logit: it ranks like the probability
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_of = torch.nn.BCEWithLogitsLoss()
    U, V = torch.from_numpy(user_factors), torch.from_numpy(item_factors)
    for epoch in range(epochs):
        negatives = recalled[users, rng.integers(0, recalled.shape[1], users.size)]
        keep = negatives >= 0
        pair_users = np.concatenate([users, users[keep]])
        pair_items = np.concatenate([positives, negatives[keep]])
        labels = np.concatenate([np.ones(positives.size), np.zeros(keep.sum())])
        order = rng.permutation(labels.size)
        total = 0.0
        for start in range(0, order.size, 2048):
            batch = order[start:start + 2048]
            u, i = pair_users[batch], pair_items[batch]
            x = torch.cat([U[u], V[i], torch.from_numpy(
                candidate_features(user_factors, item_factors, popularity, u, i))], 1)
            loss = loss_of(model(x)[:, 0], torch.from_numpy(labels[batch]).float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.size
        print(f"epoch {epoch + 1}: loss {total / order.size:.4f}")
    return model.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data = datasets.synthetic_implicit(args.users, args.items, 30 * args.users, seed=args.seed)
    train, test = split.per_user_split(data, 0.2, seed=args.seed)
    als = recfuse.ALS(factors=FACTORS, iterations=10, random_state=args.seed).fit(train)
    user_factors = np.ascontiguousarray(als.user_factors, dtype=np.float32)
    item_factors = np.ascontiguousarray(als.item_factors, dtype=np.float32)
    popularity = np.asarray(train.sum(axis=0)).ravel()

    recalled, _ = als.recommend(np.arange(train.shape[0]), k=RECALL)  # seen items filtered
    module = train_mlp(train, recalled, user_factors, item_factors, popularity,
                       epochs=args.epochs, seed=args.seed)
    scorer = recfuse.MLPScorer.from_torch(module, precision=args.precision)
    prepared = scorer.prepare_items(item_factors, item_column=FACTORS)  # once, at load

    users = np.flatnonzero(np.diff(test.indptr))  # users with held-out items
    lists = [row[row >= 0] for row in recalled[users]]  # ragged: one array per user
    owners = np.repeat(users, [len(row) for row in lists])
    features = candidate_features(user_factors, item_factors, popularity, owners,
                                  np.concatenate(lists))
    ranked, _ = scorer.rank(user_factors[users], lists, prepared, k=K,
                            candidate_features=features)

    # recfuse's scores are PyTorch's (float32), or within bfloat16's rounding.
    first = lists[0]
    first_features = features[:first.size]
    rows = torch.cat([torch.from_numpy(user_factors[users[:1]]).expand(first.size, -1),
                      torch.from_numpy(item_factors[first]), torch.from_numpy(first_features)], 1)
    with torch.inference_mode():
        expected = module(rows)
    got = scorer.score_candidates(user_factors[users[0]], first, prepared,
                                  candidate_features=first_features)
    tolerance = 1e-4 if args.precision == "float32" else 5e-2
    np.testing.assert_allclose(got, expected.numpy()[:, 0], rtol=tolerance, atol=tolerance)

    before = metrics.ranking_metrics(recalled[users, :K], test, users)["precision"]
    after = metrics.ranking_metrics(ranked, test, users)["precision"]
    print(f"{scorer!r}")
    print(f"precision@{K} of {users.size} users: ALS {before:.4f}, ALS + MLP {after:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
