"""Sharded runs on 8 simulated CPU devices. One subprocess runs every case of
tests/sharding_worker.py, with XLA_FLAGS=--xla_force_host_platform_device_count=8 set in its
environment only, and the tests assert on the facts it reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulated_devices import simulated_devices_env

ROOT = Path(__file__).resolve().parents[2]
MOVES_ACTIVATIONS = ("all-gather", "all-to-all", "collective-permute", "reduce-scatter")


def run_worker(case: str, *args: str) -> dict:
    env = simulated_devices_env(8)   # and the suite's compile settings (tests/conftest.py)
    done = subprocess.run([sys.executable, "-m", "tests.sharding_worker", case, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """Every case's facts from one 8-device subprocess: one JAX start instead of four, and the
    programs the cases share (the tiny model's init, one device's references, the resharding
    of the same weights onto the same meshes) compile once. The `cli` case runs `purevedec
    caption` / `train` with and without --mesh on a tiny captioning checkpoint and a folder of 8
    captioned images."""
    from models import make_reference, save_captioning_checkpoint
    from cli_util import caption_folder
    root = tmp_path_factory.mktemp("mesh_cli")
    model = make_reference(dec_kw={"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
                                   "tie_word_embeddings": False}, init_scale=3.0, seed=1)
    ckpt = save_captioning_checkpoint(model, root / "ckpt")
    return run_worker("all", ckpt, caption_folder(root / "data"), str(root / "runs"))


@pytest.fixture(scope="module")
def data_parallel(worker):
    return worker["data_parallel"]


def assert_no_activation_traffic(collectives):
    """A data-parallel program may all-reduce a loop's stop flag (one bool), nothing that holds
    activations: no all-gather, all-to-all, permute or reduce-scatter, no all-reduce of an array."""
    moved = [c for c in collectives if c[0] in MOVES_ACTIVATIONS or c[2] > 1]
    assert not moved, f"collectives that move activations: {moved}"


@pytest.mark.parametrize("batch", [16, 24])
def test_encode_keeps_batch_split(data_parallel, batch):
    """16 images (chunk rows of 2 per device) and 24 (3 chunks, one image of each device per
    chunk): encode's output stays split on "data", the compiled program moves no activations,
    and the states equal one device's."""
    facts = data_parallel[f"encode{batch}"]
    assert facts["spec"] == ["data"] and facts["public_spec"] == ["data"], facts
    assert_no_activation_traffic(facts["collectives"])
    assert facts["diff"] < 1e-5


def test_encode_on_devices_not_dividing_the_chunk(data_parallel):
    """12 images on 3 devices: a chunk of 8 cannot take as many images from each device, so the
    encoder runs in one pass and stays split."""
    facts = data_parallel["encode12_on3"]
    assert facts["chunk"] is None
    assert facts["spec"] == ["data"]
    assert_no_activation_traffic(facts["collectives"])
    assert facts["diff"] < 1e-5


def test_init_cache_rows_follow_the_images(data_parallel):
    """The empty self-attention K/V and the key mask are split like the images (they depend on
    no input, so a jitted init_cache used to return them whole on every device)."""
    facts = data_parallel["init_cache"]
    assert facts == {"self_k": ["data"], "mask": ["data"], "cross_k": ["data"]}


@pytest.mark.parametrize("mode", ["greedy", "beam", "sample", "beam_sample"])
def test_generate_keeps_batch_split(data_parallel, mode):
    """generate_core on 16 images split over 8 devices: the token buffers come back split, the
    compiled program all-reduces only its stop flags, and tokens, lengths and scores equal one
    device's (same key for sampling)."""
    facts = data_parallel[mode]
    assert facts["spec"] == ["data"], facts
    assert_no_activation_traffic(facts["collectives"])
    assert facts["tokens_equal"] and facts["lengths_equal"], facts
    assert facts["scores_diff"] < 1e-4


# ---- shard_params / shard_batch: tensor and data parallel on four meshes ----

MESH_SIZES = {"data8": {"data": 8}, "model8": {"model": 8}, "data2_model4": {"data": 2, "model": 4},
              "data4_model2": {"data": 4, "model": 2}}
# What the rules must give, written out by hand for the tiny worker model (8 heads, MLP width 64,
# vocabulary 64, all divisible by 8): path -> the mesh axis of each dimension. Anything not listed is replicated.
SPLIT_OVER_MODEL = {
    "encoder.blocks.0.attn.q.w": ["model", None], "encoder.blocks.0.attn.q.b": ["model"],
    "encoder.blocks.0.attn.k.w": ["model", None], "encoder.blocks.0.attn.v.w": ["model", None],
    "encoder.blocks.0.attn.k.b": ["model"], "encoder.blocks.0.attn.v.b": ["model"],
    "encoder.blocks.0.attn.o.w": [None, "model"], "encoder.blocks.0.mlp.fc.w": ["model", None],
    "encoder.blocks.0.mlp.fc.b": ["model"], "encoder.blocks.0.mlp.out.w": [None, "model"],
    "decoder.blocks.0.attn.qkv.w": ["model", None], "decoder.blocks.0.attn.qkv.b": ["model"],
    "decoder.blocks.0.attn.o.w": [None, "model"], "decoder.blocks.0.cross.q.w": ["model", None],
    "decoder.blocks.0.cross.k.w": ["model", None], "decoder.blocks.0.cross.v.w": ["model", None],
    "decoder.blocks.0.cross.q.b": ["model"], "decoder.blocks.0.cross.k.b": ["model"],
    "decoder.blocks.0.cross.v.b": ["model"], "decoder.blocks.0.mlp.fc.b": ["model"],
    "decoder.blocks.0.cross.o.w": [None, "model"], "decoder.blocks.0.mlp.fc.w": ["model", None],
    "decoder.blocks.0.mlp.out.w": [None, "model"], "decoder.wte": ["model", None],
}
REPLICATED_EXAMPLES = ("encoder.patch.w", "encoder.pos", "encoder.blocks.0.ln1.scale", "encoder.blocks.0.attn.o.b",
                       "decoder.wpe", "decoder.ln_f.scale", "decoder.blocks.0.mlp.out.b")


@pytest.fixture(scope="module")
def tensor_parallel(worker):
    return worker["tensor_parallel"]


def _trim(axes):
    axes = list(axes)
    while axes and axes[-1] is None:
        axes.pop()
    return axes


@pytest.mark.parametrize("mesh", list(MESH_SIZES))
def test_param_placement_follows_the_rules(tensor_parallel, mesh):
    """Every weight's sharding is the hand-written expectation (heads, MLP width and vocabulary
    over "model" when the mesh has it, all else replicated), and each device holds 1/M of a
    split tensor's bytes (the whole of a replicated one)."""
    placement = tensor_parallel[mesh]["placement"]
    m = MESH_SIZES[mesh].get("model", 1)
    for path, (spec, nbytes, per_device) in placement.items():
        want = _trim(SPLIT_OVER_MODEL.get(path, [])) if m > 1 else []
        assert _trim(spec) == want, (path, spec, want)
        assert per_device * (m if want else 1) == nbytes, (path, nbytes, per_device)
    assert set(SPLIT_OVER_MODEL) | set(REPLICATED_EXAMPLES) <= set(placement)


@pytest.mark.parametrize("mesh", list(MESH_SIZES) + ["data4_model2_fsdp"])
def test_sharded_model_equals_one_device(tensor_parallel, mesh):
    """forward logits within 1e-4 of one device (split reductions change the summation order),
    encode likewise, generate tokens identical (greedy, beam, sampling with the same key); on a
    mesh with "data" the logits stay split over it, fsdp included (its "data"-split weights are
    gathered where used, rather than the batch's activations)."""
    facts = tensor_parallel[mesh]
    assert facts["forward_diff"] < 1e-4 and facts["encode_diff"] < 1e-4, facts
    assert facts["greedy"] and facts["beam"] and facts["sample"], facts
    if MESH_SIZES.get(mesh.removesuffix("_fsdp"), {}).get("data", 1) > 1:
        assert facts["logits_spec"][0] == "data", facts["logits_spec"]


def test_fsdp_splits_the_largest_free_axis_over_data(tensor_parallel):
    """fsdp=True on data=4 x model=2: big tensors get "data" on their largest dimension not
    already split over "model"; small ones (norms, biases) stay replicated."""
    placement = tensor_parallel["data4_model2_fsdp"]["placement"]
    assert _trim(placement["decoder.wte"][0]) == ["model", "data"]          # [64,32]: vocab already on model
    assert _trim(placement["decoder.wpe"][0]) == []                          # [16,32]: 512 elements, small
    assert _trim(placement["encoder.blocks.0.mlp.fc.w"][0]) == ["model", "data"]  # [64,32]
    assert _trim(placement["decoder.blocks.0.attn.qkv.w"][0]) == ["model", "data"]  # [96,32]
    assert _trim(placement["decoder.blocks.0.ln1.scale"][0]) == []
    spec, nbytes, per_device = placement["decoder.blocks.0.attn.qkv.w"]
    assert per_device * 8 == nbytes


def test_explicit_mesh_is_refused_with_the_way_out(tensor_parallel):
    message = tensor_parallel["explicit_error"]
    assert message and "AxisType.Auto" in message and "jax.make_mesh" in message


def test_shard_batch_refuses_a_batch_the_data_axis_does_not_divide(tensor_parallel):
    message = tensor_parallel["batch_error"]
    assert message and "(6, 3, 8, 8)" in message and "'data' axis of size 8" in message


def test_undivided_dimension_stays_replicated_with_a_warning():
    """A vocabulary of 66 over model=4: the embedding stays replicated and the warning names it;
    the MLP (64 wide) is still split. Runs in this process: only the mesh's axis sizes are read."""
    from jax.sharding import AbstractMesh, AxisType
    import purevedec as pv
    from purevedec.sharding import param_specs
    config = pv.Config(encoder=pv.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=8,
                                            intermediate_size=64, image_size=8, patch_size=4),
                       decoder=pv.GPT2Config(n_embd=32, n_layer=1, n_head=8, vocab_size=66, n_positions=16, n_inner=64),
                       decoder_start_token_id=0)
    mesh = AbstractMesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    with pytest.warns(UserWarning, match=r"decoder\.wte: dimension 0 of size 66 .* 'model' of size 4"):
        specs = param_specs(config, mesh)
    assert tuple(specs["decoder"]["wte"]) == ()
    assert tuple(specs["decoder"]["blocks"][0]["mlp"]["fc"]["w"]) == ("model",)


# ---- the sharded train step ----

@pytest.fixture(scope="module")
def train(worker):
    return worker["train"]


@pytest.mark.parametrize("mesh", list(MESH_SIZES) + ["data4_model2_fsdp"])
def test_sharded_train_step_equals_one_device(train, mesh):
    """One AdamW step (weight decay, clipping, 2 micro-batches, dropout on) on 16 images with 2
    captions each: the updated params within 1e-6 of one device's step (the step moved them by
    more than 1e-3), the same loss, every param keeping its layout, and the optimizer's moments
    laid out as their params (split ones included when the mesh has "model" or fsdp)."""
    facts = train[mesh]
    assert facts["moved"] > 1e-3
    assert facts["params_diff"] < 1e-6, facts["params_diff"]
    assert facts["loss_diff"] < 1e-5
    assert facts["layout_changed"] == [] and facts["mu_differs"] == []
    split = MESH_SIZES.get(mesh, {}).get("model", 1) > 1 or mesh.endswith("fsdp")
    assert (facts["mu_split"] > 0) == split


def test_data_parallel_train_program_moves_only_gradients(train):
    """data=8, params whole on every device: the compiled train step's only collectives are
    all-reduces of gradient-shaped arrays (a weight's shape) and scalars (loss, token counts,
    norm): no all-gather, all-to-all, permute or reduce-scatter of activations."""
    facts = train["data8"]
    weights = {tuple(s) for s in facts["weight_shapes"]}
    assert facts["collectives"]
    for op, shapes in facts["collectives"]:
        assert op == "all-reduce", (op, shapes)
        assert all(tuple(s) in weights or s == [] for s in shapes), shapes


def test_fsdp_train_program_gathers_weights_not_activations(train):
    """fsdp on data=4 x model=2: beyond the collectives the same mesh needs without fsdp (the
    tensor-parallel traffic within each device's rows), the program only all-gathers weights
    (each a weight's shape with its "model" axis split): the batch stays split over "data"."""
    fsdp, plain = train["data4_model2_fsdp"], train["data4_model2"]
    gathered = {tuple(s) for s in fsdp["gathered_shapes"]}
    extra = [c for c in fsdp["collectives"] if c[0] != "all-reduce"]
    for c in [c for c in plain["collectives"] if c[0] != "all-reduce"]:
        assert c in extra, f"activations laid out otherwise than without fsdp: {c} is missing"
        extra.remove(c)
    assert extra, "fsdp gathers its weights"
    for op, shapes in extra:
        assert op == "all-gather" and all(tuple(s) in gathered for s in shapes), (op, shapes)


# ---- --mesh on the command line ----

@pytest.fixture(scope="module")
def cli_runs(worker):
    """`purevedec caption` / `train` with and without --mesh, in the 8-device subprocess."""
    return worker["cli"]


@pytest.mark.parametrize("mesh", ["data=2,model=4", "data=8"])
def test_caption_with_mesh_equals_one_device(cli_runs, mesh):
    """Beam-search captions (jsonl: text and score) of 8 images in batches of 4: the same records
    with --mesh as without (data=8 pads each batch of 4 to 8 rows)."""
    code, out, err = cli_runs[f"caption {mesh}"]
    plain = cli_runs["caption"]
    assert plain[0] == 0 and len(plain[1].splitlines()) == 8, plain[2]
    assert code == 0, err
    ours = [json.loads(line) for line in out.splitlines()]
    theirs = [json.loads(line) for line in plain[1].splitlines()]
    assert [(r["path"], r["caption"]) for r in ours] == [(r["path"], r["caption"]) for r in theirs]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs)) < 1e-4


def test_bad_mesh_is_a_one_line_usage_error(cli_runs):
    code, out, err = cli_runs["caption data=3,model=2"]
    assert code == 2 and not out and "--mesh: mesh data=3,model=2 has 6 devices, but JAX sees 8" in err
    code, out, err = cli_runs["caption data=8,gpu=1"]
    assert code == 2 and "unknown axis 'gpu'; the axes are 'data' and 'model'" in err and len(err.splitlines()) == 1
    code, _, err = cli_runs["train bad_batch"]
    assert code == 2 and "--batch-size 6 is not a multiple of the mesh's data axis (8)" in err
    code, _, err = cli_runs["train fsdp_alone"]
    assert code == 2 and "--fsdp needs --mesh" in err


def test_train_with_mesh_and_fsdp_equals_one_device(cli_runs):
    """`purevedec train --mesh data=4,model=2 --fsdp`: the same training loss as a run without
    a mesh, and a checkpoint whose params are within float tolerance of that run's."""
    assert cli_runs["train plain"][0] == 0, cli_runs["train plain"][2]
    assert cli_runs["train data4_model2_fsdp"][0] == 0, cli_runs["train data4_model2_fsdp"][2]
    plain, sharded = cli_runs["loss plain"], cli_runs["loss data4_model2_fsdp"]
    assert len(plain) == 1 and abs(plain[0] - sharded[0]) < 1e-5
    # AdamW's first step is about lr * g / |g|: round-off in tiny gradients moves a param by up to a
    # few 1e-6 at lr=1e-3 (measured 7.6e-6); a wrong gradient would move it by ~lr.
    assert cli_runs["train_params_diff"] < 5e-5


def test_every_decoders_vocabulary_is_split_over_model():
    """The vocabulary rows of a TrOCR decoder's tied token embedding go over "model" exactly as
    GPT-2's do: the rule follows the parameter's vocabulary axis, not one family's leaf names."""
    from jax.sharding import AbstractMesh, AxisType
    import purevedec as pv
    from purevedec import TrOCRConfig
    from purevedec.sharding import param_specs
    config = pv.Config(encoder=pv.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                            intermediate_size=64, image_size=8, patch_size=4),
                       decoder=TrOCRConfig(vocab_size=64, d_model=32, decoder_layers=1, decoder_attention_heads=4,
                                           decoder_ffn_dim=64, max_position_embeddings=16),
                       decoder_start_token_id=2)
    mesh = AbstractMesh((1, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    specs = param_specs(config, mesh)
    assert tuple(specs["decoder"]["embed"]) == ("model",)
    assert tuple(specs["decoder"]["blocks"][0]["mlp"]["fc"]["w"]) == ("model",)
    assert tuple(specs["decoder"]["pos"]) == ()
