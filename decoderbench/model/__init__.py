"""Stage 1, the model: the Persian Rug toy model and its exact mathematics (no decoder, no I/O).

A cell ``(n_s, n_d, p)`` -> sparse data ``x`` (:mod:`.data`) -> the encoder ``h = W_in x`` built from
fast Walsh-Hadamard transforms (:mod:`.hadamard`, :mod:`.encoders`); the evaluation stream's key and batch
(:mod:`.evalkey`); the scalar channel and its posterior (:mod:`.channel`); per-cell theory by quadrature
(:mod:`.theory`), exact finite-size references (:mod:`.exact`) and the permutation-symmetry diagnostics of any
``ReLU(W x + b)`` (:mod:`.symmetry`). Imports only the package's base (``errors``, ``_validate``).
"""
