"""The bundled ``purevedec:shapes`` model: its scene generator, recipe and training command.

Imports the layers below (model core, generation, checkpoints, captioning, training); nothing imports it back.
"""
