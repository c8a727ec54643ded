"""One table of (rtol, atol) per dtype, used by every numerical test (kornia's testing/base.py style)."""

from __future__ import annotations

import torch

TOLERANCES = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-12)}
