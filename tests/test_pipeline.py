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


def test_train_order_is_seeded_reshuffled_per_epoch_and_resumable():
    source = _source(12)

    def take(it, n):
        return [next(it)["y"].tolist() for _ in range(n)]

    first = take(pipeline.train_iterator(source, _transform, global_batch_size=4, seed=1), 6)
    again = take(pipeline.train_iterator(source, _transform, global_batch_size=4, seed=1), 6)
    other = take(pipeline.train_iterator(source, _transform, global_batch_size=4, seed=2), 6)
    assert first == again and first != other
    epoch1, epoch2 = sum(first[:3], []), sum(first[3:], [])
    assert sorted(epoch1) == sorted(epoch2) == list(range(12)) and epoch1 != epoch2

    it = pipeline.train_iterator(source, _transform, global_batch_size=4, seed=1)
    take(it, 2)
    state = it.get_state()
    resumed = pipeline.train_iterator(source, _transform, global_batch_size=4, seed=1)
    resumed.set_state(state)
    assert take(resumed, 4) == first[2:]


def test_pad_batch_rejects_overflow_and_empty():
    rows = [dict(a=np.zeros(2))] * 3
    with pytest.raises(ValueError, match="do not fit"):
        transforms.pad_batch(rows, 2)
    with pytest.raises(ValueError, match="at least one row"):
        transforms.pad_batch([], 2)
