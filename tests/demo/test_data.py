"""Digits splits: sizes, disjointness, stratification, normalization and seeded order."""
import torch

from plinio.demo.data import (IMAGE_SIZE, NUM_CLASSES, batches_per_epoch, iterate_batches,
                              load_digits_data)


def _rows(images: torch.Tensor) -> set:
    return {tuple(row.tolist()) for row in images.reshape(len(images), -1)}


def test_splits_partition_the_data_set_and_are_stratified():
    data = load_digits_data(seed=0)
    sizes = [len(data.train), len(data.val), len(data.test)]
    assert sum(sizes) == 1797
    assert data.input_shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    train, val, test = _rows(data.train.images), _rows(data.val.images), _rows(data.test.images)
    # the digits data set has a few exact duplicate images; the splits must still not
    # share more than that handful
    assert len(train & test) <= 3 and len(train & val) <= 3
    for split in (data.train, data.val, data.test):
        counts = torch.bincount(split.labels, minlength=NUM_CLASSES).float()
        share = counts / counts.sum()
        assert float(share.min()) > 0.08 and float(share.max()) < 0.12


def test_standardized_with_training_statistics():
    data = load_digits_data(seed=0)
    assert abs(float(data.train.images.mean())) < 1e-4
    assert abs(float(data.train.images.std()) - 1.0) < 1e-4
    assert data.train.images.dtype == torch.float32 and data.train.labels.dtype == torch.long


def test_split_depends_on_seed_only():
    a, b, c = load_digits_data(seed=3), load_digits_data(seed=3), load_digits_data(seed=4)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.test.labels, c.test.labels)


def test_batches_cover_the_split_once_in_a_seeded_order():
    split = load_digits_data(seed=0).val

    def order(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([labels for _, labels in iterate_batches(split, 64, gen)])

    batches = list(iterate_batches(split, 64))
    assert len(batches) == batches_per_epoch(split, 64)
    assert torch.equal(torch.cat([labels for _, labels in batches]), split.labels)
    shuffled = order(1)
    assert torch.equal(shuffled, order(1))
    assert not torch.equal(shuffled, order(2))
    assert torch.equal(torch.sort(shuffled).values, torch.sort(split.labels).values)
