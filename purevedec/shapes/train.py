"""Train the ``purevedec:shapes`` model from scratch with the recipe, using the library's own
train step (``purevedec.training``) on freshly rendered scenes; write an HF checkpoint folder.

The output folder holds the checkpoint (config.json, generation_config.json, model.safetensors,
tokenizer and preprocessor files), ``metrics.jsonl`` (one record per logged step and per
evaluation), ``report.json`` (accuracy on the held-out test scenes, time) and ``training.png``
(loss curve and validation accuracy).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from ..captioning.image import parse_image_config
from ..checkpoints import save
from ..generation import GenerationConfig, generate
from ..training.optim import TrainConfig
from ..training.step import init_state, make_train_step
from . import recipe as r
from .plot import write_training_plot
from .stream import batches, scene_batch

# Held-out scene streams: validation (scored during training) and test (scored once, at the end).
VALIDATION_STREAM = r.EVAL_STREAM + 1
TEST_STREAM = r.EVAL_STREAM


def caption_text(row, id_to_word: dict[int, str]) -> str:
    """Generated ids (decoder start first) -> caption words up to the first eos."""
    words = []
    for token in np.asarray(row)[1:].tolist():
        if token == r.EOS_ID:
            break
        if token not in (r.PAD_ID, r.START_ID):
            words.append(id_to_word.get(token, "<unk>"))
    return " ".join(words)


def exact_match(params, stream: int, count: int, image_config, *, chunk: int = 250) -> tuple[float, list[dict]]:
    """Share of scenes ``(stream, 0..count-1)`` whose greedy caption equals the true one."""
    id_to_word = {i: w for w, i in r.vocab().items()}
    hits, rows = 0, []
    for start in range(0, count, chunk):
        b = scene_batch(stream, start, min(chunk, count - start), image_config, r.vocab(), r.EOS_ID,
                        r.MAX_CAPTION_TOKENS)
        seqs = generate(params, b.pixels, max_new_tokens=r.MAX_CAPTION_TOKENS).sequences
        for i, (row, truth) in enumerate(zip(seqs, b.captions)):
            text = caption_text(row, id_to_word)
            hits += text == truth
            rows.append({"scene": [stream, start + i], "prediction": text, "caption": truth})
    return hits / count, rows


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not enabled, unit="step", dynamic_ncols=True)


def train(out_dir: str, recipe: r.Recipe = r.Recipe(), *, progress: bool = True) -> dict:
    """Run the recipe; returns the report (also written to ``out_dir/report.json``)."""
    os.makedirs(out_dir, exist_ok=True)
    image_config = parse_image_config(r.preprocessor_dict())
    params = r.initial_params(recipe.seed)
    tc = TrainConfig(learning_rate=recipe.learning_rate, weight_decay=recipe.weight_decay,
                     warmup_steps=recipe.warmup_steps, total_steps=recipe.steps, schedule="cosine", max_grad_norm=1.0)
    state, step = init_state(params, tc, recipe.seed), make_train_step(tc)
    log = open(os.path.join(out_dir, "metrics.jsonl"), "w", encoding="utf-8")
    history: list[dict] = []

    def record(entry):
        history.append(entry)
        log.write(json.dumps(entry) + "\n")
        log.flush()

    bar, start = _progress(recipe.steps, progress), time.perf_counter()
    stream = batches(recipe.seed, 0, recipe.steps, recipe.batch_size, image_config, r.vocab(), r.EOS_ID,
                     r.MAX_CAPTION_TOKENS)
    for n, batch in enumerate(stream, 1):
        state, m = step(state, batch.pixels, batch.labels)
        if n % 10 == 0 or n == recipe.steps:
            loss = float(m.loss)
            bar.set_postfix(loss=f"{loss:.4f}")
            record({"event": "train", "step": n, "loss": loss, "token_accuracy": float(m.accuracy),
                    "learning_rate": float(m.learning_rate), "seconds": time.perf_counter() - start})
        bar.update(1)
        if n % recipe.eval_every == 0 or n == recipe.steps:
            acc, _ = exact_match(state.params, VALIDATION_STREAM, recipe.eval_scenes, image_config)
            record({"event": "eval", "step": n, "exact_match": acc, "seconds": time.perf_counter() - start})
            bar.write(f"step {n}: validation exact match {acc:.4f}")
    bar.close()
    train_seconds = time.perf_counter() - start
    acc, predictions = exact_match(state.params, TEST_STREAM, recipe.final_scenes, image_config)
    save(state.params, out_dir, generation_config=GenerationConfig(**r.generation_dict()))
    r.write_side_files(out_dir)
    report = {"test_exact_match": acc, "test_scenes": recipe.final_scenes, "train_seconds": round(train_seconds, 1),
              "steps": recipe.steps, "batch_size": recipe.batch_size, "seed": recipe.seed,
              "scenes_seen": recipe.steps * recipe.batch_size}
    record({"event": "test", **report})
    log.close()
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "test_predictions.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p) + "\n" for p in predictions)
    write_training_plot(history, os.path.join(out_dir, "training.png"))
    return report
