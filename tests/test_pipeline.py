"""Input pipeline: padded and masked eval batches, seeded train order, iterator resume."""
import numpy as np
import pytest

from merjax.data import pipeline, transforms


def _source(n):
    return [dict(sample_id=f"s{i:03d}".encode(), x=np.full((3,), i, np.float32), y=i)
            for i in range(n)]


def _transform(example):
    return transforms.select(example, ("x", "y"), dict(x=np.float32, y=np.int32))


def test_eval_batches_see_every_example_once_with_a_masked_tail():
    source = _source(21)
    seen, ids = [], []
    batches = list(pipeline.eval_batches(source, _transform, global_batch_size=8))
    assert len(batches) == 3
    for batch, batch_ids in batches:
        assert batch["x"].shape == (8, 3) and batch["mask"].dtype == bool
        seen.extend(batch["y"][batch["mask"]].tolist())
        ids.extend(batch_ids)
        # Padding rows are zeros and masked out.
        assert not batch["x"][~batch["mask"]].any()
    assert seen == list(range(21))
    assert ids == [f"s{i:03d}" for i in range(21)]
    last = batches[-1][0]
    assert last["mask"].sum() == 5 and last["index"][:5].tolist() == [16, 17, 18, 19, 20]


def test_num_eval_batches_keeps_processes_in_step():
    # 21 examples over 2 processes: 11 and 10; per-process batch 4 -> 3 batches each.
    assert pipeline.num_eval_batches(21, 8, process_count=2) == 3
    assert pipeline.num_eval_batches(16, 8, process_count=1) == 2
    assert pipeline.num_eval_batches(0, 8, process_count=1) == 1
    with pytest.raises(ValueError, match="does not divide over 3 processes"):
        pipeline.num_eval_batches(10, 8, process_count=3)


def test_process_slices_partition_the_split():
    source = _source(10)
    parts = [list(pipeline.process_slice(source, p, 3)) for p in range(3)]
    ys = sorted(e["y"] for part in parts for e in part)
    assert ys == list(range(10))


@pytest.mark.parametrize("cache_bytes", [1 << 20, 0])
def test_train_order_is_seeded_reshuffled_per_epoch_and_resumable(cache_bytes):
    source = _source(12)

    def take(it, n):
        return [next(it)["y"].tolist() for _ in range(n)]

    def iterator(seed):
        return pipeline.train_iterator(source, _transform, global_batch_size=4, seed=seed,
                                       cache_bytes=cache_bytes)

    first, again, other = (take(iterator(seed), 6) for seed in (1, 1, 2))
    assert first == again and first != other
    epoch1, epoch2 = sum(first[:3], []), sum(first[3:], [])
    assert sorted(epoch1) == sorted(epoch2) == list(range(12)) and epoch1 != epoch2

    it = iterator(1)
    take(it, 2)
    state = it.get_state()
    resumed = iterator(1)
    resumed.set_state(state)
    assert take(resumed, 4) == first[2:]


def test_cached_and_streamed_batches_are_the_same_global_order():
    source = _source(10)  # batches of 4 straddle the epochs' ends

    def take(cache_bytes, process_index=0, process_count=1, n=8):
        it = pipeline.train_iterator(source, _transform, global_batch_size=4, seed=5,
                                     process_index=process_index, process_count=process_count,
                                     cache_bytes=cache_bytes)
        return [next(it) for _ in range(n)]

    whole = take(1 << 20)
    for cache_bytes in (1 << 20, 0):
        halves = [take(cache_bytes, p, 2) for p in range(2)]
        for one, *two in zip(take(cache_bytes), *halves):
            assert one["x"].dtype == np.float32 and one["x"].shape == (4, 3)
            # A process yields its rows of the global batch: side by side they are the batch.
            for key in ("x", "y"):
                np.testing.assert_array_equal(one[key], np.concatenate([h[key] for h in two]))
        assert [b["y"].tolist() for b in take(cache_bytes)] == [b["y"].tolist() for b in whole]
    # Each epoch of 10 visits every example once.
    flat = np.concatenate([b["y"] for b in whole]).tolist()
    assert sorted(flat[:10]) == sorted(flat[10:20]) == list(range(10)) and flat[:10] != flat[10:20]


@pytest.mark.parametrize("cache_bytes", [1 << 20, 0])
def test_a_transform_of_changing_shape_is_refused_by_name(cache_bytes):
    def ragged(example):
        return dict(x=np.zeros(3 + (example["y"] == 4), np.float32))

    # Batches of 2: streamed, example 4 is checked against example 0 in whichever batch it is.
    with pytest.raises(ValueError, match=r"training example 4: field 'x' has shape \(4,\), "
                                         r"the first example's is \(3,\)"):
        it = pipeline.train_iterator(_source(6), ragged, global_batch_size=2, seed=0,
                                     cache_bytes=cache_bytes)
        for _ in range(3):  # one epoch
            next(it)


def test_pad_batch_rejects_overflow_and_empty():
    rows = [dict(a=np.zeros(2))] * 3
    with pytest.raises(ValueError, match="do not fit"):
        transforms.pad_batch(rows, 2)
    with pytest.raises(ValueError, match="at least one row"):
        transforms.pad_batch([], 2)
