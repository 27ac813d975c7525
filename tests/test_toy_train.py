"""The toy reward models' batching: length-grouped, seeded, every pair once an epoch."""

import random

import numpy as np

from fusepipe.toy.train import _length_grouped_batches


def test_grouped_batches_cover_each_epoch_once_and_group_similar_lengths():
    lengths = np.array([random.Random(i).randint(10, 90) for i in range(500)])
    batches = list(_length_grouped_batches(lengths, 32, 40, random.Random(3)))
    assert len(batches) == 40 and all(0 < len(b) <= 32 for b in batches)
    first_epoch, seen = [], 0
    for b in batches:
        if seen >= len(lengths):
            break
        first_epoch += b
        seen += len(b)
    assert sorted(first_epoch) == list(range(len(lengths)))
    # padding: the widest member of a batch against its mean, far below random batches' (~2x here)
    waste = np.mean([lengths[b].max() / lengths[b].mean() for b in batches])
    shuffled = np.random.default_rng(0).permutation(len(lengths))[: 32 * 15].reshape(15, 32)
    assert waste < 1.1 < np.mean([lengths[b].max() / lengths[b].mean() for b in shuffled])


def test_grouped_batches_are_seeded_and_empty_data_gives_none():
    lengths = np.arange(100) % 17
    assert list(_length_grouped_batches(lengths, 8, 30, random.Random(1))) == \
        list(_length_grouped_batches(lengths, 8, 30, random.Random(1)))
    assert list(_length_grouped_batches(np.array([], dtype=int), 8, 5, random.Random(1))) == []
