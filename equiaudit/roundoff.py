"""Relative error that counts as arithmetic round-off, per dtype (no imports: the light pytest registry reads it).

It is the whole tolerance of exact elements and the slack added to "Kx floor" (so a zero floor does not demand
zero error). float32 / float64 sit 100x / 1e4x above the errors of exact models measured in
:mod:`equiaudit.testing`'s docstring; float16 / bfloat16 allow ~10 ulp of their mantissas. The checks
(:mod:`equiaudit.testing`), the per-layer verdicts (:mod:`equiaudit.layers`) and the reports use this one table.
"""

FLOAT_TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}
