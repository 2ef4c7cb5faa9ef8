"""How big a model is and how much a call computes: ``count_params`` and ``flops``.

    pv.count_params(params)                          # number of weights (the config is not counted)
    pv.flops(pv.forward, params, pixels, ids)        # floating-point operations of one call

``flops`` traces the call (nothing runs) and counts its operations from the program JAX builds:
2 per multiply-add of every matrix product (dot_general, convolution), 1 per output element of
every other floating-point arithmetic op, loops counted once per iteration. It is the count
XLA's own cost analysis gives for the same program within a few percent (XLA folds some
elementwise work away), without compiling it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Var

# Elementwise primitives XLA's cost analysis counts as one operation per output element.
_ELEMENTWISE = frozenset("""add sub mul div neg max min abs exp exp2 log log1p tanh logistic erf sqrt rsqrt pow
integer_pow square sin cos select_n sign expm1 atan2 rem""".split())
_REDUCTIONS = frozenset(("reduce_sum", "reduce_max", "reduce_min", "argmax", "argmin", "cumsum", "cumlogsumexp",
                         "cummax"))


def count_params(params) -> int:
    """Number of array elements in ``params`` (the model's weights; the config and other non-array
    leaves are not counted)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(params) if hasattr(x, "shape")))


def flops(fn, *args, **kwargs) -> int:
    """Floating-point operations of ``fn(*args, **kwargs)``, counted from its traced program
    (see the module's docstring). Works for any traceable function: forward, encode, a loss, a
    grad of one."""
    return int(_jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr))


def _size(aval) -> int:
    return math.prod(getattr(aval, "shape", ()))


def _is_float(aval) -> bool:
    dtype = getattr(aval, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def _jaxpr_flops(jaxpr, used=None) -> float:
    """Operations of the ops whose results are used (``used``: which of the outputs are; None: all),
    as XLA drops the rest (attention weights nobody asked for, say)."""
    live = {v for v, u in zip(jaxpr.outvars, used or [True] * len(jaxpr.outvars)) if u and isinstance(v, Var)}
    total = 0.0
    for eqn in reversed(jaxpr.eqns):
        outs = [v in live for v in eqn.outvars]
        if not any(outs) and not eqn.effects:
            continue
        live.update(v for v in eqn.invars if isinstance(v, Var))
        total += _op_flops(eqn) + _sub_flops(eqn, outs)
    return total


def _op_flops(eqn) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        return 2 * _size(eqn.outvars[0].aval) * math.prod(lhs.shape[d] for d in contract)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval  # [O, I/groups, *window] in the default layout
        return 2 * _size(eqn.outvars[0].aval) * math.prod(rhs.shape[1:])
    if name in _ELEMENTWISE and _is_float(eqn.outvars[0].aval):
        return _size(eqn.outvars[0].aval)
    if name in _REDUCTIONS and _is_float(eqn.invars[0].aval):
        return _size(eqn.invars[0].aval)
    return 0.0


def _sub_flops(eqn, outs) -> float:
    """Operations of the programs an op calls (jit, checkpoint, custom derivatives, loops, cond);
    loops and branches are counted whole."""
    params = eqn.params
    if eqn.primitive.name == "scan":
        return params["length"] * _jaxpr_flops(params["jaxpr"].jaxpr)
    if eqn.primitive.name == "while":
        return _jaxpr_flops(params["body_jaxpr"].jaxpr)  # trip count unknown: once
    if eqn.primitive.name == "cond":
        return max(_jaxpr_flops(b.jaxpr) for b in params["branches"])
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = params.get(key)
        if sub is not None:
            sub = getattr(sub, "jaxpr", sub)
            return _jaxpr_flops(sub, outs if len(sub.outvars) == len(outs) else None)
    return 0.0


# Ops that read one slice of their first operand (a table row), whatever the indices: at the
# least one slice, as every index may name the same one.
_SLICING = {"gather": lambda eqn: math.prod(eqn.params["slice_sizes"]),
            "dynamic_slice": lambda eqn: math.prod(eqn.params["slice_sizes"]),
            "slice": lambda eqn: _size(eqn.outvars[0].aval)}


def elements_read(fn, *args, **kwargs):
    """How many elements of each input array ``fn(*args, **kwargs)`` reads at the least: the
    same pytree as ``args`` with an int at each leaf. An input the program never uses reads 0,
    one it only indexes (a table's row through gather, dynamic_slice, slice) one slice, one any
    other op uses its whole size. Traced like ``flops`` (nothing runs; abstract
    ``jax.ShapeDtypeStruct`` leaves work)."""
    leaves, tree = jax.tree.flatten(args)
    closed = jax.make_jaxpr(lambda *xs: fn(*jax.tree.unflatten(tree, xs), **kwargs))(*leaves)
    return jax.tree.unflatten(tree, [_var_read(closed.jaxpr, v) for v in closed.jaxpr.invars])


def _var_read(jaxpr, var) -> int:
    """Elements of ``var`` the ops of ``jaxpr`` read: the most any one use reads (uses may all
    read the same slice), its whole size if the program returns it."""
    whole = _size(var.aval)
    most = whole if any(v is var for v in jaxpr.outvars) else 0
    for eqn in jaxpr.eqns:
        for i, v in enumerate(eqn.invars):
            if v is var:
                most = max(most, _use_read(eqn, i, whole))
        if most >= whole:
            return whole
    return most


def _use_read(eqn, i: int, whole: int) -> int:
    """Elements of the ``i``-th operand of ``eqn`` it reads."""
    name = eqn.primitive.name
    if name in _SLICING and i == 0:
        return min(whole, _SLICING[name](eqn))
    sub = next((eqn.params[k] for k in ("jaxpr", "call_jaxpr", "fun_jaxpr") if k in eqn.params), None)
    if sub is not None and name != "scan":  # calls (jit, remat, custom derivatives): operands map 1:1
        inner = getattr(sub, "jaxpr", sub)
        if len(inner.invars) == len(eqn.invars):
            return _var_read(inner, inner.invars[i])
    return whole
