"""Run a pruned classifier from an artifact: dense JAX, sparse JAX, PyTorch CSR, 2:4.

Every path computes the logits of `jaxprune.models.BertForSequenceClassification` for
the same weights; only how the 6 encoder matrices per layer (query, key, value,
attention output, FFN in, FFN out) are multiplied differs:

=================  ===================================================================
backend            encoder linears
=================  ===================================================================
``jax-dense``      the Flax model as is (pruned weights are exact zeros)
``jax-bcsr``       ``jax.experimental.sparse.BCSR`` (out, in) @ x^T, via a Flax
                   method interceptor on ``nn.Dense`` (the model code is reused)
``jax-bcoo``       the same with ``BCOO`` (on CPU it materialises an nnz x tokens
                   product: 2-50x slower than dense, a reference, not a fast path)
``torch-dense``    ``transformers.BertForSequenceClassification`` as loaded
``torch-csr``      each encoder ``nn.Linear`` replaced by `sparse_linear`:
                   ``F.linear(x, W_csr, b)`` (``method="mm"``:
                   ``torch.sparse.mm(W_csr, x^T)^T + b``; neither wins consistently
                   on CPU in ``bench/export_infer.py``, F.linear needs no transposes)
``torch-2:4``      CUDA only: ``to_sparse_semi_structured`` fp16/bf16 weights, after a
                   host-side 2:4 and shape check (`jaxprune.export.patterns`)
=================  ===================================================================

Artifacts are what `jaxprune.export` writes: an HF directory (``"hf"`` / ``"2:4"``)
or a sparse artifact (a ``model.sparse.safetensors`` file or a directory holding one).

Example::

  run = make_runner("out", "torch-csr")
  logits = run(input_ids, attention_mask, token_type_ids)   # numpy (batch, labels)
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse
import numpy as np

from jaxprune import export
from jaxprune import masks as masks_lib
from jaxprune.models import bert
from jaxprune.models import convert

__all__ = [
    "BACKENDS",
    "apply_sparse",
    "load",
    "load_torch",
    "make_runner",
    "sparse_linear",
    "sparse_matmul",
    "sparsify",
    "to_torch",
    "torch_semi_structured",
    "torch_sparse_csr",
]

BACKENDS = ("jax-dense", "jax-bcsr", "jax-bcoo", "torch-dense", "torch-csr", "torch-2:4")
_SPARSE_FORMATS = {"bcsr": jsparse.BCSR, "bcoo": jsparse.BCOO}

Runner = Callable[..., np.ndarray]


# ------------------------------------------------------------------------- loading


def _is_sparse_artifact(path: Path) -> bool:
  return path.is_file() or (path / export.ARTIFACT_NAME).is_file()


def load(path: str | os.PathLike
         ) -> tuple[bert.BertForSequenceClassification, dict[str, Any], bert.BertConfig]:
  """``(model, params, config)`` from an HF export directory or a sparse artifact.

  Example::

    model, params, config = load("out")
  """
  path = Path(path)
  if _is_sparse_artifact(path):
    config = export.load_sparse_config(path)
    params = jax.tree.map(jnp.asarray, export.load_sparse(path))
    return bert.BertForSequenceClassification(config), params, config
  return convert.from_pretrained(path)


# ---------------------------------------------------------------------- JAX sparse


def _encoder_flags(params: Any, where: masks_lib.Where) -> dict[str, bool]:
  flags = masks_lib.prunable_tree(params, where)
  return {masks_lib.path_str(p): f
          for p, f in jax.tree_util.tree_flatten_with_path(flags)[0]}


def sparsify(params: Any, fmt: str = "bcsr",
             where: masks_lib.Where = masks_lib.BERT_ENCODER_MATRICES) -> dict[str, Any]:
  """Replaces the selected Dense kernels by sparse ``(out, in)`` matrices of their nonzeros.

  The result is a params tree that `apply_sparse` (and ``jax.jit``) accept: a
  ``jax.experimental.sparse`` ``BCSR``/``BCOO`` holds ``kernel.T`` with exactly the
  nonzero entries (built on the host, int32 indices).

  Args:
    params: dense params (pruned weights are zeros).
    fmt: ``"bcsr"`` or ``"bcoo"``.
    where: which kernels (default: the 6 encoder matrices per layer).

  Returns:
    A params tree with sparse leaves in place of those kernels.

  Example::

    sp = sparsify(params)
    logits = apply_sparse(model, sp, ids).logits
  """
  if fmt not in _SPARSE_FORMATS:
    raise ValueError(f"sparse format {fmt!r}; expected one of {sorted(_SPARSE_FORMATS)}")
  flags = _encoder_flags(params, where)

  def convert_leaf(path, leaf):
    name = masks_lib.path_str(path)
    if not flags[name]:
      return leaf
    if np.ndim(leaf) != 2:
      raise ValueError(f"{name} is selected but is not a 2-D (in, out) kernel")
    w = np.ascontiguousarray(np.asarray(jax.device_get(leaf)).T)
    rows, cols = np.nonzero(w)
    if fmt == "bcoo":
      indices = np.stack([rows, cols], axis=1).astype(np.int32)
      return jsparse.BCOO((jnp.asarray(w[rows, cols]), jnp.asarray(indices)),
                          shape=w.shape, indices_sorted=True, unique_indices=True)
    indptr = np.zeros(w.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    return jsparse.BCSR((jnp.asarray(w[rows, cols]), jnp.asarray(cols.astype(np.int32)),
                         jnp.asarray(indptr)), shape=w.shape, indices_sorted=True,
                        unique_indices=True)

  return jax.tree_util.tree_map_with_path(convert_leaf, params)


def sparse_matmul(x: jax.Array, w: jsparse.JAXSparse) -> jax.Array:
  """``x @ w.T`` for a sparse ``(out, in)`` matrix ``w`` and dense ``x (..., in)``.

  Computed as ``(w @ x2^T)^T`` with ``x2`` the 2-D view of ``x``: sparse @ dense is the
  product ``jax.experimental.sparse`` implements for both BCSR and BCOO.

  Example:
    >>> w = jsparse.BCSR.fromdense(jnp.eye(3))
    >>> sparse_matmul(jnp.ones((2, 3)), w).shape
    (2, 3)
  """
  x2 = x.reshape(-1, x.shape[-1])
  return (w @ x2.T).T.reshape(*x.shape[:-1], w.shape[0])


def _sparse_dense_interceptor(next_fun, args, kwargs, context):
  """Computes ``nn.Dense`` with a sparse kernel; any other call runs unchanged."""
  module = context.module
  if not (isinstance(module, nn.Dense) and context.method_name == "__call__"):
    return next_fun(*args, **kwargs)
  kernel = module.get_variable("params", "kernel")
  if not isinstance(kernel, jsparse.JAXSparse):
    return next_fun(*args, **kwargs)
  (x,) = args
  dtype = module.dtype or jnp.result_type(x, kernel.dtype)
  if kernel.dtype != dtype:  # Cast the stored values; indices stay int32.
    kernel = jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, kernel)
  y = sparse_matmul(x.astype(dtype), kernel)
  if module.use_bias:
    y = y + module.get_variable("params", "bias").astype(dtype)
  return y


def apply_sparse(model: nn.Module, params: Any, *args: Any, **kwargs: Any) -> Any:
  """``model.apply({"params": params}, ...)`` where some Dense kernels are sparse.

  Sparse kernels (from `sparsify`) are multiplied with `sparse_matmul`; the rest of the
  model is `jaxprune.models.bert` unchanged (a method interceptor on ``nn.Dense``).

  Example::

    out = jax.jit(functools.partial(apply_sparse, model))(sparsify(params), ids)
  """
  with nn.intercept_methods(_sparse_dense_interceptor):
    return model.apply({"params": params}, *args, **kwargs)


# --------------------------------------------------------------------------- torch


def _torch():
  import torch  # pylint: disable=import-outside-toplevel
  return torch


def to_torch(params: Any, config: bert.BertConfig) -> Any:
  """A ``transformers.BertForSequenceClassification`` (eval mode) holding ``params``.

  With ``config.classifier_relu`` the classifier becomes ``Sequential(ReLU, Linear)``
  so that logits match the Flax model (transformers' BERT has no such option).
  """
  torch = _torch()
  import transformers  # pylint: disable=import-outside-toplevel
  hf_config = transformers.BertConfig(**config.to_hf_dict())
  hf_config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = transformers.BertForSequenceClassification(hf_config)
  state = {k: torch.from_numpy(np.array(v, np.float32 if v.dtype.kind == "f" else v.dtype))
           for k, v in convert.flax_to_hf(params).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith("position_ids")]
  if missing or unexpected:
    raise ValueError(f"params do not fit transformers' BERT (missing {missing[:4]}, "
                     f"unexpected {unexpected[:4]})")
  return _relu_head(model, config.classifier_relu).eval()


def _relu_head(model: Any, relu: bool) -> Any:
  if relu and not isinstance(model.classifier, _torch().nn.Sequential):
    torch = _torch()
    model.classifier = torch.nn.Sequential(torch.nn.ReLU(), model.classifier)
  return model


def load_torch(path: str | os.PathLike, dtype: Any = None) -> Any:
  """A transformers classifier from an HF export dir or a sparse artifact (eval, CPU).

  Args:
    path: an ``export_model`` output (``"hf"``, ``"2:4"`` or ``"sparse"``).
    dtype: a torch dtype to cast the model to (default: float32).
  """
  torch = _torch()
  path = Path(path)
  if _is_sparse_artifact(path):
    model = to_torch(export.load_sparse(path), export.load_sparse_config(path))
  else:
    import transformers  # pylint: disable=import-outside-toplevel
    model = transformers.BertForSequenceClassification.from_pretrained(
        path, attn_implementation="eager", dtype=torch.float32)
    config = bert.BertConfig.from_hf_dict(model.config.to_dict())
    model = _relu_head(model, config.classifier_relu).eval()
  return model.to(dtype or torch.float32)


def _flax_path(torch_key: str) -> tuple[str, bool]:
  """(Flax path, transpose?) of a transformers parameter key.

  The ReLU head of `_relu_head` (``classifier.1.*``) is the Flax ``classifier``.
  """
  key = re.sub(r"^classifier\.1\.", "classifier.", torch_key)
  return convert._flax_path(key)  # pylint: disable=protected-access


def _flax_params_spec(model: Any) -> dict[str, Any]:
  """The Flax params tree of a transformers BERT, as ``jax.ShapeDtypeStruct`` leaves."""
  flat = {}
  for key, p in model.named_parameters():
    path, transpose = _flax_path(key)
    shape = tuple(p.shape)[::-1] if transpose else tuple(p.shape)
    flat[path] = jax.ShapeDtypeStruct(shape, jnp.dtype(str(p.dtype).removeprefix("torch.")))
  return convert.unflatten(flat)


def _encoder_linears(model: Any, where: masks_lib.Where) -> list[tuple[str, Any]]:
  """(name, nn.Linear) of a transformers BERT whose Flax kernel ``where`` selects.

  ``where`` is anything `jaxprune.masks.prunable_tree` takes, resolved on the Flax params
  tree the model corresponds to (shapes and dtypes only, see `_flax_params_spec`):
  ``None`` selects every Linear, regexes are searched in Flax paths such as
  ``bert/encoder/layer/0/attention/self/query/kernel``, a callable gets that tree, and a
  bool tree is shaped like it.
  """
  torch = _torch()
  flags = _encoder_flags(_flax_params_spec(model), where)
  return [(name, module) for name, module in model.named_modules()
          if isinstance(module, torch.nn.Linear)
          and flags.get(_flax_path(f"{name}.weight")[0], False)]


def _set_module(model: Any, name: str, module: Any) -> None:
  parent, _, child = name.rpartition(".")
  setattr(model.get_submodule(parent) if parent else model, child, module)


@functools.cache
def _sparse_linear_class():
  torch = _torch()

  class _SparseLinear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` a sparse CSR (out, in) tensor."""

    def __init__(self, linear: Any, method: str = "linear"):
      super().__init__()
      if method not in ("mm", "linear"):
        raise ValueError(f"SparseLinear method {method!r}; expected 'mm' or 'linear'")
      self.method = method
      self.in_features, self.out_features = linear.in_features, linear.out_features
      with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        self.register_buffer("weight", linear.weight.detach().to_sparse_csr())
      bias = linear.bias.detach() if linear.bias is not None else None
      self.register_buffer("bias", bias)

    def forward(self, x):
      if self.method == "linear":
        return torch.nn.functional.linear(x, self.weight, self.bias)
      x2t = x.reshape(-1, self.in_features).t().contiguous()
      y = torch.sparse.mm(self.weight, x2t).t()
      if self.bias is not None:
        y = y + self.bias
      return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
      nnz = self.weight.values().numel()
      return (f"in={self.in_features}, out={self.out_features}, nnz={nnz}, "
              f"method={self.method}")

  return _SparseLinear


def sparse_linear(linear: Any, method: str = "linear") -> Any:
  """A ``torch.nn.Module`` computing ``linear`` with its weight as a sparse CSR tensor.

  ``method="linear"`` (default): ``F.linear(x, W_csr, b)``; ``"mm"``:
  ``torch.sparse.mm(W_csr, x^T)^T + b``. Both run MKL sparse on CPU and cuSPARSE on
  CUDA; only the nonzeros are kept. Call it under ``torch.no_grad()``: with torch
  2.13, ``F.linear`` with a CSR weight fails under ``torch.inference_mode()``.

  Example:
    >>> import torch
    >>> lin = torch.nn.Linear(8, 4); lin.weight.data[:, ::2] = 0
    >>> x = torch.ones(2, 8)
    >>> with torch.no_grad():
    ...   torch.allclose(sparse_linear(lin)(x), lin(x))
    True
  """
  return _sparse_linear_class()(linear, method)


def torch_sparse_csr(model: Any, method: str = "linear",
                     where: masks_lib.Where = masks_lib.BERT_ENCODER_MATRICES) -> Any:
  """Replaces the selected ``nn.Linear`` of a transformers BERT by `sparse_linear` (in place).

  Returns the model. Sparse CSR matmul needs float32 on CPU (float16 on CUDA works).

  Example::

    tmodel = torch_sparse_csr(load_torch("hf"))
  """
  for name, linear in _encoder_linears(model, where):
    _set_module(model, name, sparse_linear(linear, method))
  return model


def torch_semi_structured(model: Any, dtype: Any = None,
                          where: masks_lib.Where = masks_lib.BERT_ENCODER_MATRICES) -> Any:
  """Makes the selected linears 2:4 semi-structured sparse on CUDA (in place).

  Every selected weight is checked on the host first
  (`jaxprune.export.check_semi_structured`: at most 2 nonzeros in each group of 4
  inputs; shapes torch's 2:4 kernels accept), so a bad matrix fails with a
  `jaxprune.export.PatternError` naming it, with or without a GPU. Then the model moves
  to CUDA in ``dtype`` (default float16) and each weight becomes
  ``to_sparse_semi_structured(weight)``.

  Raises:
    PatternError: a weight that is not 2:4 or has an unsupported shape.
    RuntimeError: no CUDA device.

  Example (CUDA only)::

    tmodel = torch_semi_structured(load_torch("out-2to4"))
  """
  torch = _torch()
  dtype = dtype or torch.float16
  if dtype not in (torch.float16, torch.bfloat16):
    raise ValueError(f"2:4 dtype {dtype}; expected torch.float16 or torch.bfloat16")
  linears = _encoder_linears(model, where)
  if not linears:
    raise export.PatternError("no encoder linear selected for 2:4")
  for name, linear in linears:
    export.check_semi_structured(linear.weight, f"{name}.weight")
  if not torch.cuda.is_available():
    raise RuntimeError("the 2:4 path needs a CUDA GPU (torch.cuda.is_available() is False)")
  from torch.sparse import to_sparse_semi_structured  # pylint: disable=import-outside-toplevel
  model = model.to(device="cuda", dtype=dtype)
  for _, linear in linears:
    linear.weight = torch.nn.Parameter(to_sparse_semi_structured(linear.weight.detach()),
                                       requires_grad=False)
  return model


# -------------------------------------------------------------------------- runners


def _jax_runner(model: nn.Module, params: Any, sparse_fmt: str | None) -> Runner:
  if sparse_fmt is None:
    fn = jax.jit(lambda p, *a: model.apply({"params": p}, *a).logits)
  else:
    params = sparsify(params, sparse_fmt)
    fn = jax.jit(lambda p, *a: apply_sparse(model, p, *a).logits)

  def run(input_ids, attention_mask=None, token_type_ids=None):
    ids = jnp.asarray(input_ids)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask)
    types = jnp.zeros_like(ids) if token_type_ids is None else jnp.asarray(token_type_ids)
    return np.asarray(fn(params, ids, mask, types), np.float32)

  return run


def _torch_runner(tmodel: Any) -> Runner:
  torch = _torch()
  device = next(tmodel.parameters()).device

  def run(input_ids, attention_mask=None, token_type_ids=None):
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long, device=device)
    kw = {}
    if attention_mask is not None:
      kw["attention_mask"] = torch.as_tensor(np.asarray(attention_mask), device=device)
    if token_type_ids is not None:
      kw["token_type_ids"] = torch.as_tensor(np.asarray(token_type_ids), dtype=torch.long,
                                             device=device)
    # no_grad, not inference_mode: F.linear with a CSR weight fails under inference_mode
    # ("Cannot set version_counter for inference tensor", torch 2.13).
    with torch.no_grad():
      logits = tmodel(input_ids=ids, **kw).logits
    return logits.float().cpu().numpy()

  return run


def make_runner(source: str | os.PathLike | tuple[Any, bert.BertConfig], backend: str,
                dtype: str = "float32", csr_method: str = "linear") -> Runner:
  """A ``run(input_ids, attention_mask=None, token_type_ids=None) -> logits`` function.

  Args:
    source: an artifact path (HF export dir or sparse artifact) or ``(params, config)``.
    backend: one of `BACKENDS`.
    dtype: compute dtype, ``"float32"`` or ``"float16"`` (JAX paths set the model's
      compute dtype; ``torch-2:4`` always runs in float16; ``torch-csr`` on CPU is
      float32 only).
    csr_method: ``"linear"`` or ``"mm"`` for ``torch-csr`` (see `sparse_linear`).

  Returns:
    The runner; it returns float32 numpy logits ``(batch, num_labels)``.

  Example::

    run = make_runner("out", "jax-bcsr")
    logits = run(ids, mask, types)
  """
  if backend not in BACKENDS:
    raise ValueError(f"backend {backend!r}; expected one of {BACKENDS}")
  if dtype not in ("float32", "float16"):
    raise ValueError(f"dtype {dtype!r}; expected 'float32' or 'float16'")
  if isinstance(source, tuple):
    params, config = source
  else:
    _, params, config = load(source)
  if backend.startswith("jax"):
    model = bert.BertForSequenceClassification(config.replace(dtype=dtype))
    return _jax_runner(model, params, None if backend == "jax-dense" else backend[4:])
  torch = _torch()
  tmodel = to_torch(params, config)
  if backend == "torch-2:4":
    return _torch_runner(torch_semi_structured(tmodel))
  if dtype == "float16":
    if backend == "torch-csr" and not torch.cuda.is_available():
      raise ValueError("torch-csr in float16 needs CUDA (MKL sparse CSR is float32 only); "
                       "expected dtype='float32' on CPU")
    tmodel = tmodel.to(device="cuda" if torch.cuda.is_available() else "cpu",
                       dtype=torch.float16)
  if backend == "torch-csr":
    tmodel = torch_sparse_csr(tmodel, csr_method)
  return _torch_runner(tmodel)
