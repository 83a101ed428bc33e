"""What a run costs (merjax/costs.py): XLA's FLOPs of a known program, the peak table and MFU, the
`cost/*` and `perf/*` keys a tiny MER-PS run writes, and the benchmark's one JSON line."""
import json
import math

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import ps as ps_config
from merjax import costs, train

M, K, N = 64, 256, 32


def _matmul(a_sharding=None):
    a = jax.ShapeDtypeStruct((M, K), jnp.float32, sharding=a_sharding)
    b = jax.ShapeDtypeStruct((K, N), jnp.float32)
    traced = jax.jit(jnp.matmul).trace(a, b)
    return traced.lower().compile(), traced.jaxpr


def test_matmul_flops_are_2mkn_on_one_device_and_summed_over_a_sharded_program():
    compiled, jaxpr = _matmul()
    cost = costs.compiled_costs(compiled, num_devices=1, jaxpr=jaxpr)
    assert cost["flops_per_step"] == pytest.approx(2 * M * K * N, rel=0.01)
    assert cost["matmul_flops_per_step"] == 2 * M * K * N
    assert costs.compiled_costs(compiled)["flops_per_step"] == pytest.approx(2 * M * K * N,
                                                                             rel=0.01)
    # Reads both operands and writes the result, at least.
    assert cost["bytes_accessed_per_step"] >= 4 * (M * K + K * N + M * N)
    assert cost["peak_memory_bytes_per_device"] >= 4 * (M * K + K * N)
    # XLA counts one device's share of an SPMD program; the cost is the step's total.
    mesh = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
    sharded = costs.compiled_costs(_matmul(NamedSharding(mesh, P("data")))[0], num_devices=8)
    assert sharded["flops_per_step"] == pytest.approx(2 * M * K * N, rel=0.01)


def test_matmul_flops_of_a_traced_program_count_scans_and_backward_passes():
    def f(w, xs):  # a scan of 3 [M, K] @ [K, K] matmuls
        return jax.lax.scan(lambda w, x: (w, jnp.tanh(x @ w)), w, xs)[1].sum()

    w, xs = jnp.ones((K, K)), jnp.ones((3, M, K))
    assert costs.matmul_flops(jax.make_jaxpr(f)(w, xs)) == 3 * 2 * M * K * K
    # The gradient for w adds one matmul per step (the one for xs is not asked for).
    assert costs.matmul_flops(jax.make_jaxpr(jax.grad(f))(w, xs)) == 2 * 3 * 2 * M * K * K


def test_the_matmuls_of_a_program_with_their_executions_and_their_time_alone():
    def f(w, xs, flag):
        ys = jax.lax.scan(lambda w, x: (w, x @ w), w, xs)[1]  # 3 executions of one matmul
        # The costlier branch counts: two [M, K] @ [K, K] matmuls against none.
        z = jax.lax.cond(flag, lambda y: (y @ w) @ w, lambda y: y, ys[0])
        return z.sum() + (xs[0] @ w).sum()

    w, xs = jnp.ones((K, K)), jnp.ones((3, M, K))
    jaxpr = jax.make_jaxpr(f)(w, xs, True)
    ops = costs.matmul_ops(jaxpr)
    assert sorted(n for _, n in ops) == [1, 1, 1, 3]
    assert all(e.primitive.name == "dot_general" for e, _ in ops)
    assert costs.matmul_flops(jaxpr) == 6 * 2 * M * K * K
    # The six are one op, [M, K] @ [K, K], timed once and counted six times.
    (row,) = costs.matmuls_alone(jaxpr, repeats=2, calls=2)
    assert row["op"] == f"f32[{M},{K}] . f32[{K},{K}] contract (1; 0)"
    assert row["executions"] == 6 and row["ms_per_step"] > 0 and row["share"] == 1.0
    assert row["gflop_per_s"] == pytest.approx(6 * 2 * M * K * K / row["ms_per_step"] / 1e6)
    # A program without matmuls spends no time in them.
    assert costs.matmuls_alone(jax.make_jaxpr(jnp.tanh)(w)) == []


def test_matmuls_alone_name_their_dimensions_and_come_costliest_first():
    def f(q, k, x, kernel):
        logits = jnp.einsum("bqd,bkd->bqk", q, k)  # a batched dot
        y = jax.lax.conv_general_dilated(x, kernel, (2,), "SAME")
        return logits.sum() + y.sum() + (q[0] @ k[0].T).sum()

    q = jnp.ones((8, 128, 64))
    jaxpr = jax.make_jaxpr(f)(q, q, jnp.ones((4, 16, 512)), jnp.ones((32, 16, 5)))
    rows = costs.matmuls_alone(jaxpr, repeats=2, calls=2)
    assert sorted(r["op"] for r in rows) == [
        "conv f32[4,16,512] * f32[32,16,5] strides 2 groups 1",
        "f32[128,64] . f32[64,128] contract (1; 0)",
        "f32[8,128,64] . f32[8,128,64] contract (2; 2) batch (0; 0)"]
    times = [r["ms_per_step"] for r in rows]
    assert times == sorted(times, reverse=True) and all(r["executions"] == 1 for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)


class _NoCosts:  # a backend that gives no counts, or XLA's -1 ("unknown", e.g. cuBLAS on GPU)
    def __init__(self, analysis):
        self.analysis = analysis

    def cost_analysis(self):
        return self.analysis

    def memory_analysis(self):
        return None


def test_unknown_counts_fall_back_to_the_matmuls():
    _, jaxpr = _matmul()
    for analysis in (None, {"flops": -1.0, "bytes accessed": -1.0}):
        cost = costs.compiled_costs(_NoCosts(analysis), jaxpr=jaxpr)
        assert cost["flops_per_step"] == 2 * M * K * N
        assert cost["bytes_accessed_per_step"] is None
        assert cost["peak_memory_bytes_per_device"] is None


def test_cost_analysis_as_a_list_of_dicts_is_read_too():
    compiled, _ = _matmul()
    older_jax = _NoCosts([compiled.cost_analysis()])  # older jax releases returned [dict]
    cost = costs.compiled_costs(older_jax, num_devices=2)
    assert cost["flops_per_step"] == pytest.approx(2 * 2 * M * K * N, rel=0.01)


def test_parameter_count_and_bytes_of_a_model_and_its_optimizer():
    model = nnx.Linear(K, N, rngs=nnx.Rngs(0))  # K x N kernel + N bias
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    count, params, opt = costs.state_sizes(nnx.state((model, optimizer)))
    assert count == K * N + N and params == 4 * count
    assert opt >= 2 * params  # two Adam moments, plus step counters


def test_a_train_steps_costs_name_its_mesh_and_parameter_count():
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), devices=jax.devices()[:8])
    compiled, jaxpr = _matmul(NamedSharding(mesh, P("data")))
    model = nnx.Linear(K, N, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    cost = costs.train_step_costs(compiled, jaxpr, nnx.state((model, optimizer)), mesh)
    assert (cost["mesh_data"], cost["mesh_fsdp"]) == (4, 2)
    assert cost["params"] == K * N + N


def test_peak_table_lookup_and_mfu(monkeypatch):
    assert costs.table_peak("NVIDIA H100 80GB HBM3", "bfloat16") == (989.5e12, "NVIDIA H100 SXM")
    assert costs.table_peak("NVIDIA H100 80GB HBM3", "float32")[0] == 494.5e12  # TF32
    assert costs.table_peak("TPU v5 lite", "bfloat16")[0] == 197e12
    assert costs.table_peak("TPU v5", "bfloat16")[0] == 459e12
    assert costs.table_peak("NVIDIA H100 PCIe") is None  # not the SXM part: measured instead
    peak, source = costs.peak_flops("bfloat16", 8, device_kind="NVIDIA H100 80GB HBM3")
    assert peak == 8 * 989.5e12 and "H100" in source

    monkeypatch.setattr(costs, "measured_matmul_flops", lambda: 1e11)
    assert costs.peak_flops("float32", 8, device_kind="cpu") == (1e11, costs.MEASURED)
    assert costs.peak_flops("bfloat16", 8, device_kind="Some Future Chip")[1] == costs.MEASURED

    assert costs.mfu(2e9, 5.0, 1e11) == pytest.approx(0.1)
    assert costs.mfu(None, 5.0, 1e11) is None and costs.mfu(2e9, 5.0, None) is None
    assert costs.describe(dict(flops_per_step=6.4e8, bytes_accessed_per_step=2.1e9,
                               peak_memory_bytes_per_device=1.7e7, param_bytes=8.5e5,
                               optimizer_bytes=1.7e6, peak_flops_per_s=1.15e11,
                               peak_source=costs.MEASURED)) == (
        "640 MFLOP/step, 2.1 GB accessed, peak 17 MB/device, params 850 kB, optimizer 1.7 MB; "
        "peak 115 GFLOP/s (measured f32 matmul)")


def test_the_measured_peak_is_the_best_measurement_of_the_process(monkeypatch):
    """Each measure_matmul_flops call is one measurement, kept in order; the peak a run divides
    by is their best, so a measurement taken in a slow second of a shared host does not stand
    for the machine."""
    monkeypatch.setattr(costs, "_MATMUL_RATES", {})
    taken = [costs.measure_matmul_flops(n=64, repeats=1) for _ in range(3)]
    assert all(rate > 0 for rate in taken)
    assert costs.matmul_flops_measured(64) == taken
    assert costs.measured_matmul_flops(64) == max(taken)
    assert costs.matmul_flops_measured(32) == []
    assert costs.measured_matmul_flops(32) > 0  # none yet: one is taken
    assert len(costs.matmul_flops_measured(32)) == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = ps_config.get_config("runlocal")
    config.data.tfds_dir = str(tmp_path_factory.getbasetemp() / "ps_tfds")
    config.total_steps, config.log_every = 4, 2
    config.eval_every = config.checkpoint_every = 4
    workdir = tmp_path_factory.mktemp("costs_run")
    train.run(config, str(workdir))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return config, rows


def test_a_run_writes_its_costs_once_and_perf_at_each_log_flush(tiny_run):
    config, rows = tiny_run
    (cost,) = [r for r in rows if any(k.startswith("cost/") for k in r)]
    assert set(cost) == {"step", *(f"cost/{k}" for k in (
        "flops_per_step", "matmul_flops_per_step", "bytes_accessed_per_step",
        "peak_memory_bytes_per_device", "params",
        "param_bytes", "optimizer_bytes", "peak_flops_per_s",
        "mesh_data", "mesh_fsdp", "mesh_model"))}
    assert all(v > 0 for k, v in cost.items() if k != "step")
    # f32 parameters; Adam keeps two moments of each.
    assert cost["cost/param_bytes"] == 4 * cost["cost/params"]
    assert cost["cost/optimizer_bytes"] >= 2 * cost["cost/param_bytes"]
    # The mesh the step was compiled for: the config's -1 data axis took all 8 devices.
    assert [cost[f"cost/mesh_{a}"] for a in ("data", "fsdp", "model")] == [8, 1, 1]

    perf = [r for r in rows if "perf/steps_per_s" in r]
    assert [r["step"] for r in perf] == [2, 4]
    for r in perf:
        assert all(math.isfinite(r[k]) and r[k] > 0
                   for k in ("perf/steps_per_s", "perf/samples_per_s", "perf/mfu"))
        assert r["perf/samples_per_s"] == pytest.approx(r["perf/steps_per_s"] * config.batch_size)
        assert r["perf/mfu"] == pytest.approx(
            cost["cost/flops_per_step"] * r["perf/steps_per_s"] / cost["cost/peak_flops_per_s"])
