"""`purevedec caption` with valid sampling options, written to a file with -o: the records are
the Captioner's for the same options and key."""

from __future__ import annotations

import json

import numpy as np

from cli_util import checkpoint, make_images, run_cli  # noqa: F401 (fixture)

SAMPLING = {"temperature": 0.7, "top_k": 5, "top_p": 0.9}


def test_sampling_options_reach_generation_and_output_goes_to_the_file(checkpoint, tmp_path):
    import jax
    import purevedec
    paths = make_images(tmp_path / "imgs", 3)
    out_file = tmp_path / "captions.jsonl"
    flags = [f for name, value in SAMPLING.items() for f in (f"--{name.replace('_', '-')}", str(value))]
    argv = ["caption", *paths, "--model", checkpoint[1], "--batch-size", "2", "--max-new-tokens", "5",
            "--format", "jsonl", "--do-sample", *flags, "--seed", "3", "-o", str(out_file)]
    code, out, err = run_cli(argv)
    assert code == 0, err
    assert out == ""  # the records went to the file
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    cap = purevedec.Captioner.from_pretrained(checkpoint[1])
    want = [r[0] for r in cap.captions(paths, batch_size=2, key=jax.random.key(3), do_sample=True,
                                       max_new_tokens=5, **SAMPLING)]
    assert [r["caption"] for r in rows] == [c.text for c in want]
    assert np.allclose([r["score"] for r in rows], [c.score for c in want], atol=1e-5)
    # the options changed the draw: greedy decoding of the same images gives other captions
    greedy = [r[0].text for r in cap.captions(paths, batch_size=2, max_new_tokens=5, do_sample=False)]
    assert [r["caption"] for r in rows] != greedy
