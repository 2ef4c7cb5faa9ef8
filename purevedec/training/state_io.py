"""Save and restore a TrainState exactly (params, optimizer state, step, PRNG key) as one .npz.

No pickle: every leaf is a plain numeric array stored under its key path in the state
("params['decoder']['wte']", "opt_state[0].mu[...]"), and restoring fills a template state built
the same way (``init_state`` with the same params layout and TrainConfig), checking that every
path, shape and dtype matches so that a checkpoint from another model or optimizer is refused
with the name of what differs. The PRNG key is stored as its raw key data.
"""

from __future__ import annotations

import os
import tempfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import CheckpointError
from .step import TrainState

_RNG = "rng"


def _named_leaves(state: TrainState) -> dict[str, np.ndarray]:
    body = state._replace(rng=None)
    flat = jax.tree_util.tree_flatten_with_path(body)[0]
    out = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}
    out[_RNG] = np.asarray(jax.random.key_data(state.rng))
    return out


def save_state(path: str, state: TrainState) -> str:
    """Write ``state`` to ``path`` (.npz), atomically: a crash mid-write leaves the old file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **_named_leaves(state))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


# Besides the arrays' bytes, an .npz holds a zip entry and a .npy header per array: a few
# hundred bytes each. A file past the template's size by more than this is not a train state.
_SLACK_PER_ARRAY, _SLACK = 4096, 1 << 20


def _read_arrays(path: str, want: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of the .npz at ``path``, read only after its entries' sizes are checked against
    the template's (a truncated, oversized or foreign file is a CheckpointError naming it)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no train state there (missing, or not a regular file)")
    bound = sum(a.nbytes for a in want.values()) + _SLACK_PER_ARRAY * len(want) + _SLACK
    try:
        if os.path.getsize(path) > bound:
            raise CheckpointError(f"{path}: {os.path.getsize(path)} bytes, more than this model's train state "
                                  f"can take ({bound}): not its train state")
        with zipfile.ZipFile(path) as z:
            unpacked = sum(i.file_size for i in z.infolist())
        if unpacked > bound:
            raise CheckpointError(f"{path}: unpacks to {unpacked} bytes, more than this model's train state "
                                  f"can take ({bound})")
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable train state, truncated or damaged "
                              f"({type(e).__name__}: {str(e)[:120]})") from None


def restore_state(path: str, template: TrainState) -> TrainState:
    """The state saved at ``path``, laid out as ``template`` (same params layout and optimizer)."""
    arrays = _read_arrays(path, _named_leaves(template))
    want = _named_leaves(template)
    missing, extra = sorted(set(want) - set(arrays)), sorted(set(arrays) - set(want))
    if missing or extra:
        raise CheckpointError(f"{path}: train state does not match this model/optimizer: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}")
    for name, ref in want.items():
        got = arrays[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise CheckpointError(f"{path}: {name} is {got.dtype}{list(got.shape)}, expected "
                                  f"{ref.dtype}{list(ref.shape)}")
    body = template._replace(rng=None)
    paths, treedef = jax.tree_util.tree_flatten_with_path(body)
    leaves = [jnp.asarray(arrays[jax.tree_util.keystr(p)]) for p, _ in paths]
    rng = jax.random.wrap_key_data(jnp.asarray(arrays[_RNG]), impl=jax.random.key_impl(template.rng))
    return jax.tree_util.tree_unflatten(treedef, leaves)._replace(rng=rng)
