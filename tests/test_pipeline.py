"""Input pipeline: padded and masked eval batches, seeded train order, iterator resume, a run's
cache of transformed splits."""
import collections

import jax
import numpy as np
import pytest

from configs import ps as ps_config
from merjax import reference, sharding
from merjax.data import on_device, pipeline, transforms


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


def test_process_slices_partition_the_split(monkeypatch):
    """Three processes' evaluation batches hold every example of the split once."""
    source, ys = _source(10), []
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    for p in range(3):
        monkeypatch.setattr(jax, "process_index", lambda: p)
        for batch, ids in pipeline.eval_batches(source, _transform, global_batch_size=6):
            ys += batch["y"][batch["mask"]].tolist()
    assert sorted(ys) == list(range(10))


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
    with pytest.raises(ValueError, match=r"example 4: field 'x' has shape \(4,\), "
                                         r"the first example's is \(3,\)"):
        it = pipeline.train_iterator(_source(6), ragged, global_batch_size=2, seed=0,
                                     cache_bytes=cache_bytes)
        for _ in range(3):  # one epoch
            next(it)


class _Counting:
    """The test transform, counting its calls per example."""

    def __init__(self):
        self.calls = collections.Counter()

    def __call__(self, example):
        self.calls[int(example["y"])] += 1
        return _transform(example)


def _assert_same_batches(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_run_cache_transforms_each_example_once_for_every_fold_and_reader():
    source = _source(11)
    # Two folds over one split: each trains on one half and validates on the other.
    halves = np.arange(0, 11, 2), np.arange(1, 11, 2)
    folds = [(pipeline.Subset(source, halves[1 - k]), pipeline.Subset(source, halves[k]))
             for k in range(2)]
    readout = reference.Readout(name="r", kind="ridge", features=lambda batch: batch["x"],
                                target=None, output=None, num_outputs=1)

    def run(transform, cache):
        """What a run's folds read: train batches (past an epoch), two evaluations, the
        reference's rows."""
        own = dict(cache=cache) if cache else dict(cache_bytes=0)
        out = []
        for k, (train, validation) in enumerate(folds):
            it = pipeline.train_iterator(train, transform, global_batch_size=4, seed=k, **own)
            out += [next(it) for _ in range(4)]
            for _ in range(2):
                for batch, ids in pipeline.eval_batches(validation, transform, global_batch_size=4,
                                                        cache=cache):
                    out.append(dict(batch, ids=np.array(ids)))
            for split in (train, validation):
                ids, x, rows = reference.read(readout, split, transform, ("y",), "sample_id",
                                              chunk=4, cache=cache)
                out.append(dict(rows, x=x, ids=np.array(ids)))
        return out

    counting = _Counting()
    cached = run(counting, pipeline.TransformCache(1 << 20, id_field="sample_id"))
    assert counting.calls == {i: 1 for i in range(11)}
    _assert_same_batches(cached, run(_transform, None))


@pytest.mark.parametrize("process_index,process_count", [(0, 1), (0, 2), (1, 2)])
def test_cached_eval_batches_are_the_streamed_ones(monkeypatch, process_index, process_count):
    monkeypatch.setattr(jax, "process_index", lambda: process_index)
    monkeypatch.setattr(jax, "process_count", lambda: process_count)
    # 7 of 21 examples in batches of 4 (one process) or of 3 a process (4 and 3 examples): the
    # last batch is padded, process 1's only padding (the masked template).
    source = pipeline.Subset(_source(21), np.arange(3, 17, 2))
    batch_size = 4 if process_count == 1 else 6

    def batches(cache):
        return [dict(batch, ids=np.array(ids)) for batch, ids in pipeline.eval_batches(
            source, _transform, global_batch_size=batch_size, cache=cache)]

    cache = pipeline.TransformCache(1 << 20, id_field="sample_id")
    cached, streamed = batches(cache), batches(None)
    assert cache.get(source, _transform) is not None and len(cached) == 2
    real_rows = {(0, 1): 3, (0, 2): 1, (1, 2): 0}[process_index, process_count]
    assert cached[-1]["mask"].sum() == real_rows
    _assert_same_batches(cached, streamed)


@pytest.mark.parametrize("cache_bytes", [1 << 20, 0])
def test_a_process_without_examples_evaluates_one_masked_batch(monkeypatch, cache_bytes):
    """One example over two processes: process 1 has none, and keeps step with one fully masked
    batch of the split's first example (the shapes of every batch)."""
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    cache = pipeline.TransformCache(cache_bytes, id_field="sample_id") if cache_bytes else None
    (batch, ids), = pipeline.eval_batches(_source(1), _transform, global_batch_size=4,
                                          cache=cache)
    assert ids == [] and not batch["mask"].any() and batch["x"].shape == (2, 3)
    assert batch["index"].dtype == np.int32 and batch["y"].dtype == np.int32


def test_splits_over_the_budget_left_are_transformed_per_batch():
    transform = _Counting()
    held, over = _source(12), [dict(e, y=100 + e["y"]) for e in _source(12)]
    example_bytes = sum(v.nbytes for v in _transform(held[0]).values())
    # Room for one split, not two: the first one read is held, the other streamed.
    cache = pipeline.TransformCache(int(1.5 * 12 * example_bytes), id_field="sample_id")
    for split in (held, over):
        list(pipeline.eval_batches(split, transform, global_batch_size=4, cache=cache))
    assert cache.get(held, transform) is not None and cache.get(over, transform) is None
    # The streamed split's first example sized it; the evaluation read every example.
    assert transform.calls == {**{i: 1 for i in range(12)}, 100: 2,
                               **{100 + i: 1 for i in range(1, 12)}}
    for split in (held, over):
        it = pipeline.train_iterator(split, transform, global_batch_size=4, seed=0, cache=cache)
        for _ in range(6):  # two epochs
            next(it)
    assert all(transform.calls[i] == 1 for i in range(12))
    # (Read-ahead may have transformed more.)
    assert all(transform.calls[100 + i] >= 3 for i in range(12))
    with pytest.raises(ValueError, match="cache_bytes .* or a cache"):
        pipeline.train_iterator(held, transform, global_batch_size=4, seed=0, cache=cache,
                                cache_bytes=1)


def test_pad_batch_pads_masks_and_rejects_overflow_and_empty():
    batch = transforms.pad_batch(dict(a=np.ones((2, 3), np.int16)), 4)
    np.testing.assert_array_equal(batch["a"], [[1, 1, 1]] * 2 + [[0, 0, 0]] * 2)
    assert batch["a"].dtype == np.int16 and batch["mask"].tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="takes 1 to 2 rows; found 3"):
        transforms.pad_batch(dict(a=np.zeros((3, 2))), 2)
    with pytest.raises(ValueError, match="found 0"):
        transforms.pad_batch(dict(a=np.zeros((0, 2))), 2)


def test_a_held_split_transforms_only_the_examples_its_readers_ask_for():
    """Fold subsets read their rows (and the first example, which sizes the split), each once;
    what they read equals the streamed batches."""
    source, transform = _source(10), _Counting()
    cache = pipeline.TransformCache(1 << 20, id_field="sample_id")
    validation = pipeline.Subset(source, np.array([3, 5, 7]))
    train = pipeline.Subset(source, np.array([5, 6, 7, 8]))

    def read(cache):
        evals = [dict(batch, ids=np.array(ids)) for batch, ids in pipeline.eval_batches(
            validation, transform if cache else _transform, global_batch_size=4, cache=cache)]
        own = dict(cache=cache) if cache else dict(cache_bytes=0)
        it = pipeline.train_iterator(train, transform if cache else _transform,
                                     global_batch_size=2, seed=0, **own)
        return evals + [next(it) for _ in range(3)]

    cached = read(cache)
    assert transform.calls == {0: 1, 3: 1, 5: 1, 6: 1, 7: 1, 8: 1}
    _assert_same_batches(cached, read(None))


@pytest.mark.parametrize("budget, per_gather", [(1 << 20, 16), (1 << 20, 4), (1 << 20, 1),
                                                (16, 16)])
def test_batches_gathered_on_the_devices_are_the_host_batches(budget, per_gather):
    """A held split within config.pipeline.device_cache_bytes is copied to the 8 devices and
    training batches are gathered there, `per_gather` at a time: the global batch, sharded as the
    step takes it, equal to the host's, through epochs' ends and a restore (in the middle of a
    group of 4). Over the budget it stays on the host."""
    config = ps_config.get_config("runlocal")
    config.pipeline.device_cache_bytes = budget
    config.pipeline.device_gather_batches = per_gather
    mesh = sharding.make_mesh(config.mesh)
    devices = on_device.for_run(config, mesh)
    source = pipeline.Subset(_source(13), np.arange(2, 12))  # 10 examples; batches of 8

    def iterator(**kwargs):
        return pipeline.train_iterator(source, _transform, global_batch_size=8, seed=4,
                                       cache_bytes=1 << 20, **kwargs)

    host, gathered = iterator(), iterator(on_device=devices)
    want, got = [next(host) for _ in range(6)], [next(gathered) for _ in range(6)]
    on_devices = budget > 3 * 10 * 4 + 10 * 4  # the split's x and y
    group = jax.sharding.NamedSharding(  # k batches, each along the batch axes
        mesh, jax.sharding.PartitionSpec(None, sharding.batch_axes(config)))
    for batch in got:
        assert isinstance(batch, on_device.Packed) == on_devices
        if on_devices:  # x (float32) and y (int32): one array per dtype, k batches of 8
            assert {k: (v.shape, v.sharding) for k, v in batch.groups.items()} == {
                "float32": ((per_gather, 8, 3), group), "int32": ((per_gather, 8, 1), group)}
            for value in on_device.unpack(batch).values():
                assert value.sharding.is_equivalent_to(sharding.batch_sharding(mesh, config),
                                                       value.ndim)
                assert len(value.addressable_shards) == 8
    _assert_same_batches(_fields(got), want)

    restored = iterator(on_device=devices)
    restored.set_state(gathered.get_state())
    again = iterator(on_device=devices)
    for _ in range(6):
        next(again)
    _assert_same_batches(_fields(next(restored) for _ in range(3)),
                         _fields(next(again) for _ in range(3)))


def _fields(batches):
    """Batches as numpy fields, whichever way they were gathered."""
    return [jax.tree.map(np.asarray, on_device.unpack(b)) for b in batches]


def test_one_gather_makes_the_batches_that_fit_its_bytes(monkeypatch):
    """config.pipeline.device_gather_batches consecutive batches come from one gather, fewer
    where they would hold more than on_device.GATHER_BYTES (CPU_GATHER_BYTES on CPU devices);
    the batches are the same."""
    config = ps_config.get_config("runlocal")
    config.pipeline.device_cache_bytes = 1 << 20
    source = pipeline.Subset(_source(13), np.arange(2, 12))
    batch_bytes = 8 * (3 * 4 + 4)  # batches of 8 examples of x (3 float32) and y (one)

    def gathered(gather_bytes, cpu_gather_bytes=1 << 30):
        monkeypatch.setattr(on_device, "GATHER_BYTES", gather_bytes)
        monkeypatch.setattr(on_device, "CPU_GATHER_BYTES", cpu_gather_bytes)
        devices = on_device.for_run(config, sharding.make_mesh(config.mesh))
        calls = []
        gather = devices.gather
        devices.gather = lambda arrays, at: calls.append(at.shape) or gather(arrays, at)
        it = pipeline.train_iterator(source, _transform, global_batch_size=8, seed=4,
                                     cache_bytes=1 << 20, on_device=devices)
        return _fields(next(it) for _ in range(6)), calls

    whole, whole_calls = gathered(1 << 20)
    assert whole_calls == [(config.pipeline.device_gather_batches, 8)]  # one gather for all 6
    capped, capped_calls = gathered(int(2.5 * batch_bytes))
    assert capped_calls == [(2, 8)] * 3
    _assert_same_batches(capped, whole)
    on_cpu, on_cpu_calls = gathered(1 << 20, int(3.5 * batch_bytes))  # these devices are CPUs
    assert on_cpu_calls == [(3, 8)] * 2
    _assert_same_batches(on_cpu, whole)
    with pytest.raises(ValueError, match=r"device_gather_batches must be a whole number >= 1; "
                                         r"found 0"):
        config.pipeline.device_gather_batches = 0
        on_device.for_run(config, sharding.make_mesh(config.mesh))


def test_a_packed_group_unpacks_to_each_batch_of_its_fields():
    """on_device.packed puts the fields of one dtype side by side (64-bit ones cast as a
    transfer casts them); a Packed batch unpacks, eagerly and in a jitted step, to its rows."""
    rng = np.random.default_rng(0)
    arrays = dict(x=rng.normal(size=(6, 2, 3)).astype(np.float32), y=np.arange(6),
                  mask=rng.random((6, 4)) > 0.5, faces=rng.integers(0, 255, (6, 2, 2, 3), np.uint8),
                  weight=rng.random(6), length=np.arange(6, dtype=np.int32) * 2)
    layout = on_device.layout(arrays)
    columns = dict(on_device.packed(arrays, layout))
    assert {k: (v.shape, v.dtype.name) for k, v in columns.items()} == {
        "float32": ((6, 7), "float32"), "int32": ((6, 2), "int32"), "bool": ((6, 4), "bool"),
        "uint8": ((6, 12), "uint8")}
    assert np.shares_memory(columns["uint8"], arrays["faces"])  # a dtype of one field: a view
    rows = np.array([[4, 0, 5], [1, 1, 3]])  # a group of 2 batches of 3
    groups = {k: jax.numpy.asarray(v[rows]) for k, v in columns.items()}
    for b in range(2):
        batch = on_device.Packed(groups, jax.numpy.int32(b), layout)
        for got in (on_device.unpack(batch), jax.jit(on_device.unpack)(batch)):
            assert got.keys() == arrays.keys()
            for name, value in arrays.items():
                want = value[rows[b]]
                want = want.astype(jax.dtypes.canonicalize_dtype(want.dtype))
                assert got[name].dtype == want.dtype, name
                np.testing.assert_array_equal(np.asarray(got[name]), want, err_msg=name)
    fields = dict(x=arrays["x"][:3])
    assert on_device.unpack(fields) is fields  # a host batch passes as it is


def test_devices_hold_no_copy_on_a_cpu_unless_asked():
    assert on_device.device_budget(-1) == 0  # a CPU device's memory is the host cache's
    assert on_device.device_budget(1 << 20) == 1 << 20
    with pytest.raises(ValueError, match=r"device_cache_bytes must be -1 .* found -2"):
        on_device.device_budget(-2)
    config = ps_config.get_config("runlocal")
    assert config.pipeline.device_cache_bytes == -1
    assert on_device.for_run(config, sharding.make_mesh(config.mesh)) is None
