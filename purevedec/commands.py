"""The ``purevedec`` command line: ``caption`` and ``read`` (captioning layer), ``train`` (training layer),
``train-shapes`` and ``render-shapes`` (the bundled shapes model's recipe).

It sits above both layers, so neither imports the other: the captioning layer's driver
(``captioning.program``) runs the parser, and this module hands it every command.
"""

from __future__ import annotations

import sys
from typing import TextIO


def _add_train(commands) -> None:
    from .training import cli as train_cli  # optax and the data loader only load for `train`
    parser = train_cli.add_parser(commands)
    parser.set_defaults(run=lambda args, out, err: train_cli.run(args))


def _add_shapes(commands) -> None:
    from .shapes import cli as shapes_cli
    shapes_cli.add_parsers(commands)


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``purevedec COMMAND ...``; returns the exit code. ``purevedec train`` run from the
    process's own command line (``argv`` None) first restarts with huge pages where that helps
    (training.huge_pages)."""
    if argv is None and sys.argv[1:2] == ["train"]:
        from .training.huge_pages import restart_with_huge_pages
        restart_with_huge_pages()
    from .captioning import cli, program, read_cli
    return program.main(argv, out, err, commands=(cli.add_caption_command, read_cli.add_read_command, _add_train,
                                                  _add_shapes))


if __name__ == "__main__":
    sys.exit(main())
