"""Stage 4, the run: a grid of cells and decoders in, rows out.

Scoring, the one estimator and its stopping rule (:mod:`.scoring`); one unit scored in-process
(:mod:`.runner`) or guarded in a worker process (:mod:`.worker`); grids (:mod:`.grids`, the built-in grid
files under ``grids/``); the sweep and its executors (:mod:`.sweep`, :mod:`.ray_executor`); the memory check
(:mod:`.memcheck`) and progress (:mod:`.progress`). Imports the stages below it.
"""
