"""The train step's objective runs locally on replicated vectors: no collective inside the losses' loops.

On 8 fake CPU devices (tests/conftest.py sets `--xla_force_host_platform_device_count=8`), the compiled
step with `objective_sharding=replicated` has no all-reduce / all-gather / collective-permute / all-to-all /
reduce-scatter in any while-loop body (the relative-similarity merge loop and the sort/search loops), and
gives the same loss as the step without the constraint (1e-6); so does GradCache's step (`micro_batch_size`)
outside its own micro-batch loops. A positive control shows the HLO scan finds a collective that is inside
a loop.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jasper_jax.losses import ObjectiveConfig
from jasper_jax.models import BertConfig, JasperStudent, StudentConfig
from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.mesh import batch_size_divisor, make_mesh
from jasper_jax.train.settings import OptimizerSettings
from tests.train.train_helpers import make_batch, make_student

COLLECTIVE = re.compile(r"\s(all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter)(-start)?\(")
CALLEE = re.compile(r"(?:to_apply|calls|body|condition|true_computation|false_computation)=%?([\w.\-]+)")


def _computations(hlo: str) -> dict[str, list[str]]:
    """HLO text -> {computation name: its instruction lines}."""
    computations, name = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            name = header.group(1)
            computations[name] = []
        elif name is not None:
            computations[name].append(line)
    return computations


def collectives_in_loops(hlo: str, skip_trip_count: int | None = None) -> tuple[int, list[str]]:
    """(number of while loops, the collective instructions reachable from any while-loop body).

    `skip_trip_count`: leave out the loops XLA knows to run that many times (GradCache's loops over its
    micro-batches, whose encoder passes and gradient sums need collectives by design)."""
    computations = _computations(hlo)
    bodies = set()
    for line in hlo.splitlines():
        loop = re.search(r"\swhile\(.*?body=%?([\w.\-]+)", line)
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
        if loop and not (skip_trip_count and trips and int(trips.group(1)) == skip_trip_count):
            bodies.add(loop.group(1))
    found = []
    for body in bodies:
        seen, todo = set(), [body]
        while todo:
            name = todo.pop()
            if name in seen or name not in computations:
                continue
            seen.add(name)
            for line in computations[name]:
                if COLLECTIVE.search(line):
                    found.append(f"{body}: {line.strip()[:160]}")
                todo.extend(CALLEE.findall(line))
    return len(bodies), found


def test_the_scan_finds_a_collective_inside_a_loop():
    mesh = make_mesh({"data": 8}, jax.devices())
    x = jax.device_put(jnp.arange(64.0), NamedSharding(mesh, PartitionSpec("data")))
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, 3, lambda i, v: v + jnp.sum(v * v) * 1e-3, x))
    loops, found = collectives_in_loops(loop.lower(x).compile().as_text())
    assert loops == 1 and found, found


def _grad_cache_student():
    """A tiny real BERT student: GradCache needs `pooled` and `head_outputs`, which TinyStudent lacks."""
    config = StudentConfig(
        encoder=BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=16,
        ),
        heads={"fc1": 24, "fc2": 8},
    )
    with nnx.use_eager_sharding(False):
        return JasperStudent(config, rngs=nnx.Rngs(params=0, dropout=1))


def _compiled_step(replicate: bool, micro_batch_size: int = 0):
    model = _grad_cache_student() if micro_batch_size else make_student(heads={"fc1": 24, "fc2": 8})
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, (".*",))
    tx, schedule = optimizer_lib.make_optimizer(OptimizerSettings(), 1e-3, 10)
    state = step_lib.init_train_state(trainable, tx)
    mesh = make_mesh({"data": 4, "fsdp": 2}, jax.devices())
    shardings = step_lib.step_shardings(mesh, sharding_lib.rules_from_config(None), state, frozen, rest)
    # B = 72: 2556 pairs, above DENSE_MAX_PAIRS, so "auto" takes the merge loop too; forced here
    objective = step_lib.text_objective(ObjectiveConfig(relative_similarity_method="merge"))
    step = step_lib.jit_train_step(
        step_lib.train_step_fn(
            graphdef,
            tx,
            objective,
            schedule,
            activation_sharding=sharding_lib.activation_sharding(mesh),
            objective_sharding=sharding_lib.replicated(mesh) if replicate else None,
            micro_batch_size=micro_batch_size,
            batch_shards=batch_size_divisor(mesh),
        ),
        shardings,
        mesh,
    )
    args = (
        step_lib.place(state, shardings.state),
        step_lib.place(frozen, shardings.frozen),
        step_lib.place(rest, shardings.rest),
        step_lib.place(make_batch(batch_size=72, seed=3), shardings.batch),
    )
    compiled = step.lower(*args).compile()
    _, metrics = compiled(*args)
    return compiled.as_text(), jax.device_get(metrics)


def test_replicated_objective_has_no_collective_in_its_loops_and_the_same_loss():
    hlo, metrics = _compiled_step(replicate=True)
    loops, found = collectives_in_loops(hlo)
    assert loops >= 1, "the merge loop is missing from the compiled step"
    assert not found, "\n".join(found)
    _, reference = _compiled_step(replicate=False)
    for key in ("loss", "relative_similarity/fc1", "relative_similarity/fc2", "similarity/fc1", "grad_norm"):
        np.testing.assert_allclose(metrics[key], reference[key], rtol=1e-6, atol=1e-6, err_msg=key)


def test_grad_cache_objective_is_replicated_too():
    """GradCache (B = 72 in 3 micro-batches of 24) applies `objective_sharding` where it evaluates the
    objective on all B vectors: no collective in the losses' loops (its own 3-trip micro-batch loops
    aside), and the same loss and gradient norm as without the constraint."""
    micro = 24
    hlo, metrics = _compiled_step(replicate=True, micro_batch_size=micro)
    all_loops, _ = collectives_in_loops(hlo)
    loops, found = collectives_in_loops(hlo, skip_trip_count=72 // micro)
    assert 1 <= loops < all_loops, (loops, all_loops)  # the merge loops are kept, the micro-batch loops left out
    assert not found, "\n".join(found)
    _, reference = _compiled_step(replicate=False, micro_batch_size=micro)
    for key in ("loss", "relative_similarity/fc1", "relative_similarity/fc2", "similarity/fc1", "grad_norm"):
        np.testing.assert_allclose(metrics[key], reference[key], rtol=1e-5, atol=1e-5, err_msg=key)
