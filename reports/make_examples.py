"""Regenerate the example reports the README links to (``reports/examples/``).

    python -m equiaudit.reports.make_examples [--out reports/examples]

Small models defined here are trained for a minute on the shipped data (CPU is enough), then audited:

* ``digits-cnn-so2.html``: a plain CNN trained on upright digits, under 36 rotations (not invariant);
* ``digits-c4cnn-so2.html``: the same CNN with its logits averaged over the four quarter turns, trained so
  (exactly C4 invariant, and only approximately invariant in between);
* ``shapes-seg-so2.html``: a small fully convolutional segmenter on ``shapes-seg`` under 24 rotations;
* ``compare-cnn-c4cnn.html``: the two classifiers compared, with their correctness matrix upright and at 45°.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from equiaudit.audit import audit
from equiaudit.data import load_data

from . import correctness_matrix, write_comparison, write_report


class DigitCNN(nn.Module):
    """A small plain CNN classifier for 28x28 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class QuarterTurnPooled(nn.Module):
    """Logits of ``base`` averaged over the four quarter turns of the input: exactly C4 invariant."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.base(torch.rot90(x, k, dims=(-2, -1))) for k in range(4)]).mean(0)


class ShapeSegmenter(nn.Module):
    """A small fully convolutional foreground segmenter (dilated convolutions, one logit per pixel)."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, dilation in enumerate((1, 2, 4, 8, 1)):
            layers += [
                nn.Conv2d(3 if i == 0 else width, width, 3, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
        self.net = nn.Sequential(*layers, nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _train(model: nn.Module, spec: str, epochs: int, loss_of, batch_size: int = 64, lr: float = 3e-3) -> nn.Module:
    data = load_data(spec, split="train")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in data.batches(batch_size):
            opt.zero_grad()
            loss_of(model, batch).backward()
            opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "examples")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    def classify(m: nn.Module, b) -> torch.Tensor:
        return nn.functional.cross_entropy(m(b.x), b.y)

    cnn = _train(DigitCNN(), "digits", 4, classify)
    c4 = _train(QuarterTurnPooled(DigitCNN()), "digits", 4, classify)
    plain = audit(cnn, "digits", "so2", limit=300, samples=6, device="cpu")
    pooled = audit(c4, "digits", "so2", limit=300, samples=6, device="cpu")
    write_report(plain, args.out / "digits-cnn-so2.html", title="Plain CNN on digits under SO(2)")
    write_report(pooled, args.out / "digits-c4cnn-so2.html", title="Quarter-turn pooled CNN on digits under SO(2)")
    matrices = correctness_matrix(
        cnn, c4, "digits", "rot:0,45", names=("CNN", "C4-pooled CNN"), limit=300, device="cpu"
    )
    write_comparison(
        [plain, pooled],
        args.out / "compare-cnn-c4cnn.html",
        names=["CNN", "C4-pooled CNN"],
        title="Plain vs quarter-turn pooled CNN",
        matrices=matrices,
    )

    seg = _train(
        ShapeSegmenter(),
        "shapes-seg",
        8,
        lambda m, b: nn.functional.binary_cross_entropy_with_logits(m(b.x), b.mask),
        batch_size=32,
        lr=1e-2,
    )
    result = audit(seg, "shapes-seg", "so2:24", limit=64, samples=2, device="cpu")
    write_report(result, args.out / "shapes-seg-so2.html", title="Small segmenter on shapes-seg under SO(2)")
    for sidecar in args.out.glob("*.samples.npz"):  # the pages hold the galleries; keep the repository small
        sidecar.unlink()


if __name__ == "__main__":
    main()
