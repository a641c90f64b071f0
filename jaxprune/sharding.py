"""Device mesh, logical-axis rules, and the shardings of the train state and batches.

The mesh has two axes: ``data`` (the batch is split along it) and ``model`` (attention
heads, the FFN dimension and the vocabulary are split along it). Params are placed by
their logical axis names (``jaxprune.models.bert``) through ``RULES``; every other
leaf of the train state (Adam moments, pruning masks, the copy of the params inside the
state) is placed like the param it mirrors, found by its key path, and scalars (step
counters, the rng) are replicated. Nothing in the model or the train step knows about
devices: ``jit_train_step`` compiles the pure step with these shardings.

``jax.distributed.initialize`` is called only in ``initialize_distributed``, and only
when a coordinator is configured.

Example::

  initialize_distributed(config.coordinator_address, config.num_processes, config.process_id)
  mesh = make_mesh(config.mesh_shape)
  student_sh = param_shardings(logical_axes(student), mesh)
  state, state_sh = create_sharded_state(params, tx, jax.random.key(0), student_sh, mesh)
  teacher_params = put(teacher_params, param_shardings(logical_axes(teacher), mesh))
  step = jit_train_step(make_train_step(student, tx, teacher=teacher), mesh, state_sh,
                        param_shardings(logical_axes(teacher), mesh))
  state, metrics = step(state, teacher_params, global_batch(local_batch, mesh))
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxprune import masks as masks_lib
from jaxprune import train
from jaxprune.errors import ConfigError

__all__ = [
    "AXES",
    "RULES",
    "batch_rows",
    "batch_sharding",
    "create_sharded_state",
    "global_batch",
    "exit_peer_lost",
    "initialize_distributed",
    "jit_eval_step",
    "jit_train_step",
    "make_mesh",
    "mirror_shardings",
    "param_shardings",
    "PEER_LOST_EXIT_CODE",
    "Placement",
    "place_run",
    "put",
    "replicated",
    "to_host",
]

log = logging.getLogger(__name__)

AXES = ("data", "model")

# Logical axis (jaxprune.models.bert) -> mesh axis; None replicates that dimension.
RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("mlp", "model"),
    ("embed", None),
    ("embed_out", None),
    ("positions", None),
    ("labels", None),
)


# Exit status of a process whose run lost another process (documented in the README).
PEER_LOST_EXIT_CODE = 4


def exit_peer_lost(reason: str) -> None:
  """Ends this process at once, with one line: another process of the run died or hangs.

  ``main`` calls it when a collective fails in a multi-process run (the peer's
  connection broke: it died). Neither an exception nor a normal exit would do: JAX's
  exit path waits on a shutdown barrier that the lost process never reaches, then
  aborts with a C++ stack trace. The checkpoints already written stay valid.

  Example: ``exit_peer_lost("Gloo all-reduce failed: connection reset by peer")``.
  """
  reason = " ".join(str(reason).split())
  reason = reason if len(reason) <= 200 else reason[:197] + "..."
  sys.stderr.write(f"jaxprune: error: process {jax.process_index()}: lost another process "
                   f"of the run ({reason}); re-run the same command on every host to resume "
                   "from the last checkpoint\n")
  sys.stderr.flush()
  os._exit(PEER_LOST_EXIT_CODE)


def initialize_distributed(coordinator_address: str = "", num_processes: int = 1,
                           process_id: int = 0,
                           local_device_ids: Sequence[int] | None = None,
                           heartbeat_timeout: int = 100) -> bool:
  """Joins a multi-process run when a coordinator is configured; else does nothing.

  ``coordinator_address="auto"`` lets JAX find the coordinator and process ids itself (on
  a TPU pod slice, every worker runs the same command). Log lines of every process but
  the first are then prefixed with ``[process i]``. A process that stops sending
  heartbeats for ``heartbeat_timeout`` seconds (it hangs, or died without breaking a
  connection) makes JAX end the others. Must run before anything else touches jax
  devices. Calling it again (the demo trains twice; a library user may have joined
  already) does nothing. Returns whether the process is in a multi-process run.

  Example: ``initialize_distributed("127.0.0.1:12345", num_processes=2, process_id=0)``.
  """
  if jax.distributed.is_initialized():
    return True
  if not coordinator_address:
    if num_processes != 1:
      raise ValueError(f"num_processes={num_processes} needs a coordinator_address")
    return False
  if coordinator_address == "auto":
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout)
  else:
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids,
                               heartbeat_timeout_seconds=heartbeat_timeout)
  if jax.process_index() != 0:
    make_record, prefix = logging.getLogRecordFactory(), f"[process {jax.process_index()}] "

    def prefixed(*args, **kwargs):
      record = make_record(*args, **kwargs)
      record.msg = prefix + str(record.msg)
      return record
    logging.setLogRecordFactory(prefixed)
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def to_host(tree: Any) -> Any:
  """Numpy copies of a tree of (global) arrays, whole, on every process.

  ``jax.device_get`` fails on an array split over devices of several processes (params
  and masks when the ``model`` axis spans hosts); those are all-gathered instead, so
  every process must call this at the same point. Everything else is fetched locally.

  Example: ``params = to_host(state.params)`` before exporting on process 0.
  """
  def one(x):
    if (isinstance(x, jax.Array) and not x.is_fully_addressable
        and not x.is_fully_replicated):
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(one, tree)


def make_mesh(mesh_shape: Sequence[int] = (-1, 1), axis_names: Sequence[str] = AXES,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all (or the given) devices; one ``-1`` entry takes what is left.

  Devices are laid out by JAX's topology-aware ``create_device_mesh`` (on a TPU slice the
  ``model`` axis follows the fastest links, so the ``data`` axis visits hosts
  interleaved, not in process order: `batch_rows` says which rows each host loads).
  Devices from several slices (``slice_index``, multislice over DCN) split the ``data``
  axis across slices first (``create_hybrid_device_mesh``). Axes are
  ``AxisType.Auto``: the compiler propagates shardings through the model.

  Example: ``make_mesh((-1, 2))`` on 8 devices is a 4 (data) x 2 (model) mesh.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = list(mesh_shape)
  if len(shape) != len(axis_names):
    raise ValueError(f"mesh_shape {tuple(mesh_shape)} does not match axes {tuple(axis_names)}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh_shape {tuple(mesh_shape)}: at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if known < 1 or len(devices) % known:
      raise ValueError(f"mesh_shape {tuple(mesh_shape)} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh_shape {tuple(shape)} needs {math.prod(shape)} devices, "
                     f"have {len(devices)}")
  axis_types = (AxisType.Auto,) * len(shape)
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if slices == 1:
    try:
      return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=axis_types,
                           devices=devices)
    except NotImplementedError:
      # jax.make_mesh splits a physical torus axis only on v5e; a 2-wide model axis on a
      # 4x4 v6e or a 4x4x4 v4 needs the split (its collectives then take a sub-ring).
      pass
  elif shape[0] % slices:
    raise ValueError(f"mesh_shape {tuple(shape)}: the {axis_names[0]} axis must split "
                     f"evenly over the {slices} slices")
  from jax.experimental import mesh_utils
  try:
    if slices == 1:
      grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    else:  # multislice: the data axis crosses slices (DCN), everything else stays within
      grid = mesh_utils.create_hybrid_device_mesh(
          (shape[0] // slices, *shape[1:]), (slices, *(1,) * (len(shape) - 1)), devices,
          allow_split_physical_axes=True)
  except NotImplementedError as e:
    raise ValueError(f"mesh_shape {tuple(shape)} does not fit this slice's topology "
                     f"({' '.join(str(e).split())[:200]})") from None
  return Mesh(grid, tuple(axis_names), axis_types=axis_types)


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of a value every device holds whole (scalars, metrics)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch arrays: the leading (example) axis split along ``data``."""
  return NamedSharding(mesh, P("data"))


def param_shardings(logical_specs: Any, mesh: Mesh, shapes: Any = None,
                    rules: Sequence[tuple[str, str | None]] = RULES) -> Any:
  """``NamedSharding``s of params from their logical axis names.

  Args:
    logical_specs: a tree of ``PartitionSpec``s of logical names, e.g.
      ``jaxprune.models.bert.logical_axes(model)``.
    mesh: the device mesh.
    shapes: optional tree of the params (arrays or ``ShapeDtypeStruct``s); a dimension
      that the mesh axis does not divide (e.g. a 30522-row vocabulary on 4 devices) is
      then replicated instead of failing.
    rules: logical -> mesh axis rules.

  Returns:
    A tree of ``NamedSharding`` with the structure of ``logical_specs``.

  Example: ``param_shardings(logical_axes(model), mesh, params)``.
  """
  is_spec = lambda x: isinstance(x, P)
  mesh_specs = jax.tree.map(lambda s: nn.logical_to_mesh_axes(s, rules), logical_specs,
                            is_leaf=is_spec)
  if shapes is not None:
    mesh_specs = jax.tree.map(lambda s, x: _divisible(s, np.shape(x), mesh), mesh_specs,
                              nn.unbox(shapes), is_leaf=is_spec)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), mesh_specs, is_leaf=is_spec)


def _divisible(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """``spec`` with the mesh axes of dimensions they do not divide dropped."""
  if len(spec) > len(shape):
    raise ValueError(f"partition spec {spec} has more axes than shape {shape}")
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    if dim % math.prod(mesh.shape[a] for a in names):
      log.warning("dimension %d is not divisible by mesh axes %s: replicated", dim, names)
      axes = None
    out.append(axes)
  return P(*out)


def _path_parts(path: Sequence[Any]) -> tuple[str, ...]:
  return tuple(masks_lib.path_str(path).split("/"))


def mirror_shardings(tree: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
  """Shardings for any tree whose leaves mirror params (optimizer state, masks, ...).

  A leaf whose key path ENDS with a param's path (e.g. ``0/mu/bert/.../query/kernel``
  or ``masks/bert/.../query/kernel``) and has that param's shape gets that param's
  sharding (the longest such path wins). A leaf no path matches gets the sharding of
  the params of its shape if they all agree; every other leaf, scalars included, is
  replicated.

  Args:
    tree: arrays or ``ShapeDtypeStruct``s, e.g. ``jax.eval_shape(tx.init, params)``.
    params: the params tree (arrays or ``ShapeDtypeStruct``s).
    shardings: the params' shardings (same structure as ``params``).
    mesh: the mesh, for replicated leaves.

  Returns:
    A tree of ``NamedSharding`` with the structure of ``tree``.

  Example: ``mirror_shardings(jax.eval_shape(tx.init, params), params, sh, mesh)``.
  """
  by_path: dict[tuple[str, ...], tuple[tuple[int, ...], NamedSharding]] = {}
  by_shape: dict[tuple[int, ...], set[NamedSharding]] = {}
  flat_params, treedef = jax.tree_util.tree_flatten_with_path(nn.unbox(params))
  for (path, leaf), sharding in zip(flat_params, treedef.flatten_up_to(shardings)):
    shape = tuple(np.shape(leaf))
    by_path[_path_parts(path)] = (shape, sharding)
    by_shape.setdefault(shape, set()).add(sharding)
  rep = replicated(mesh)

  def pick(path, leaf):
    shape, parts = tuple(np.shape(leaf)), _path_parts(path)
    if not shape:
      return rep
    for start in range(len(parts)):
      match = by_path.get(parts[start:])
      if match is not None and match[0] == shape:
        return match[1]
    candidates = by_shape.get(shape, set())
    return next(iter(candidates)) if len(candidates) == 1 else rep

  return jax.tree_util.tree_map_with_path(pick, tree)


def put(tree: Any, shardings: Any) -> Any:
  """Places host values (the same on every process) as global arrays with ``shardings``.

  Each process only transfers the slices its own devices hold, so this works on one or
  many processes alike.

  Example: ``teacher_params = put(teacher_params, teacher_shardings)``.
  """
  def one(x, sharding):
    if isinstance(x, jax.Array) and (sharding.is_fully_addressable
                                     or not x.is_fully_addressable):
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(one, tree, shardings)


def create_sharded_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array,
                         shardings: Any, mesh: Mesh) -> tuple[train.TrainState, Any]:
  """A fresh ``TrainState`` born sharded, and the state's shardings.

  The shardings come from ``jax.eval_shape`` of the state through `mirror_shardings`:
  params and everything shaped like them (Adam moments, masks) as the params, scalars
  (step, optimizer counts) replicated.

  Args:
    params: initial params (host or device arrays), the same on every process.
    tx: the optimizer.
    rng: the run's key (typed or raw), replicated.
    shardings: the params' shardings (see `param_shardings`).
    mesh: the mesh.

  Returns:
    ``(state, state_shardings)``; pass ``state_shardings`` to `jit_train_step`.

  Example: ``state, state_sh = create_sharded_state(params, tx, key, student_sh, mesh)``.
  """
  create = lambda p, r: train.create_train_state(p, tx, r)
  abstract = jax.eval_shape(create, params, rng)
  state_sh = mirror_shardings(abstract, params, shardings, mesh)
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  rng = put(np.asarray(rng, np.uint32), replicated(mesh))
  state = jax.jit(create, out_shardings=state_sh)(put(params, shardings), rng)
  return state, state_sh


def batch_rows(mesh: Mesh, global_rows: int, process_index: int | None = None
               ) -> np.ndarray:
  """The rows of each global batch that a process's devices hold: the ones it loads.

  On a real TPU slice the ``data`` axis visits hosts in topology order (a v4-32 goes
  ``0,1,2,3,0,1,...``), so a process holds several separate row blocks, not one
  contiguous slice. The rows come from the batch sharding's ``devices_indices_map``
  (deduplicated: devices along ``model`` hold the same rows; every row when the mesh's
  ``data`` axis lies within one process), ascending, the order in which
  ``jax.make_array_from_process_local_data`` lays a process's local rows onto its
  devices. Loading ``batch[batch_rows(...)]`` on every process and passing it to
  `global_batch` rebuilds exactly ``batch``, row order included, on any topology.

  Args:
    mesh: the device mesh (fake devices with ``process_index`` work too).
    global_rows: the global batch size; must split evenly along ``data``.
    process_index: which process; default ``jax.process_index()``.

  Example: on 2 processes whose data axis alternates ``[0, 1, 0, 1]``,
  ``batch_rows(mesh, 8, 0)`` is ``[0, 1, 4, 5]``.
  """
  process = jax.process_index() if process_index is None else process_index
  return _batch_rows(mesh, int(global_rows), int(process))


@functools.lru_cache(maxsize=64)
def _batch_rows(mesh: Mesh, global_rows: int, process: int) -> np.ndarray:
  if global_rows % mesh.shape[AXES[0]]:
    raise ValueError(f"a batch of {global_rows} rows does not split over the "
                     f"{mesh.shape[AXES[0]]} devices of the data axis")
  held = np.zeros(global_rows, bool)
  for device, index in batch_sharding(mesh).devices_indices_map((global_rows,)).items():
    if device.process_index == process:
      held[index[0]] = True
  rows = np.flatnonzero(held)
  rows.setflags(write=False)
  return rows


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global batch arrays, split along ``data``, from this process's rows of them.

  Every process passes the rows `batch_rows` names for it (``batch[batch_rows(mesh,
  len(batch))]``), in that order; the result is the whole batch on the mesh, each row
  once, wherever the topology puts the process's devices.

  Example: ``batch = global_batch(next(local_batches), mesh)``.
  """
  sharding = batch_sharding(mesh)
  out = {}
  for name, x in local_batch.items():
    out[name] = jax.make_array_from_process_local_data(sharding, np.asarray(x))
  return out


def jit_train_step(train_step: Callable, mesh: Mesh, state_shardings: Any,
                   teacher_shardings: Any = None) -> Callable:
  """Compiles ``train_step(state, teacher_params, batch, prune_event=None)`` for the mesh.

  The state is donated (updated in place) and keeps its shardings; the teacher params
  are read-only (not donated); the batch is split along ``data``; metrics come back
  replicated; ``prune_event`` is static and positional (one compiled variant per value).

  Example: ``step = jit_train_step(make_train_step(...), mesh, state_sh, teacher_sh)``.
  """
  return jax.jit(train_step,
                 in_shardings=(state_shardings, teacher_shardings, batch_sharding(mesh)),
                 out_shardings=(state_shardings, replicated(mesh)),
                 donate_argnums=(0,), static_argnums=(3,))


def jit_eval_step(eval_step: Callable, mesh: Mesh, param_shardings: Any) -> Callable:
  """Compiles ``eval_step(params, batch) -> logits``: batch split along ``data``, logits
  replicated (every process gets all of them for the metrics).

  Example: ``step = jit_eval_step(make_eval_step(model), mesh, student_sh)``.
  """
  return jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding(mesh)),
                 out_shardings=replicated(mesh))


class Placement(NamedTuple):
  """A run's mesh and its arrays placed on it (see `place_run`)."""
  mesh: Mesh
  state: train.TrainState
  state_shardings: Any
  param_shardings: Any
  teacher_params: Any
  teacher_shardings: Any


def place_run(mesh_shape: Sequence[int], student_axes: Any, params: Any,
              tx: optax.GradientTransformation, rng: jax.Array, *,
              teacher_axes: Any = None, teacher_params: Any = None,
              batch_sizes: Mapping[str, int] | None = None) -> Placement:
  """The mesh, a fresh sharded train state and the teacher's params, in one call.

  Args:
    mesh_shape: ``(data, model)`` sizes (-1: the remaining devices).
    student_axes: the student's logical axis names (``models.logical_axes(student)``).
    params: the student's initial params.
    tx: the optimizer.
    rng: the run's key.
    teacher_axes: the teacher's logical axes (distillation only).
    teacher_params: the teacher's params, placed read-only.
    batch_sizes: ``{name: global size}`` that must split evenly along ``data``.

  Raises:
    ConfigError: a mesh the devices cannot form, or a batch the data axis cannot split.

  Example: ``placed = place_run((-1, 1), logical_axes(model), params, tx, key)``.
  """
  try:
    mesh = make_mesh(mesh_shape)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for name, size in (batch_sizes or {}).items():
    if size % mesh.shape["data"]:
      raise ConfigError(f"{name}={size} is not divisible by the {mesh.shape['data']} "
                        "data-parallel devices")
  param_sh = param_shardings(student_axes, mesh, params)
  state, state_sh = create_sharded_state(params, tx, rng, param_sh, mesh)
  teacher_sh = None
  if teacher_params is not None:
    teacher_sh = param_shardings(teacher_axes, mesh, teacher_params)
    teacher_params = put(teacher_params, teacher_sh)
  return Placement(mesh, state, state_sh, param_sh, teacher_params, teacher_sh)
