"""Centralized probe: how fast the CNN backbone learns through each SSE-C frame (digits 8x8).

Trains the project's CNN backbone on the first 300 digits through the frozen SSE-C only
(SGD lr 0.05, momentum 0.9, weight decay 1e-4, batch 32: the project's training defaults)
and prints held-out accuracy (digits 300-799), the loss and the mean feature norm per
epoch, for the reference frame (norm 0.1, random bias) and the top-magnitude unit frame.

    python bench/fedloge_sse_c.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedvq_app.aggregation.etf import reference_sse_c, sparse_etf  # noqa: E402
from fedvq_app.models.cnn import cnn_backbone  # noqa: E402


def main(epochs: int = 6) -> None:
    images, labels = load_digits(return_X_y=True)
    x = (torch.tensor(images / 16.0, dtype=torch.float32).view(-1, 1, 8, 8) - 0.5) / 0.5
    y = torch.tensor(labels)
    for kind in ("reference", "top-magnitude"):
        torch.manual_seed(0)
        backbone, dim = cnn_backbone(1, 8)
        if kind == "reference":
            w, b = reference_sse_c(dim, 10, 0.6, 42)
            weight, bias = torch.tensor(w), torch.tensor(b)
        else:
            weight, bias = torch.tensor(sparse_etf(dim, 10, 0.6, 42)), torch.zeros(10)
        opt = torch.optim.SGD(backbone.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        for epoch in range(epochs):
            order = torch.randperm(300)
            for i in range(0, 300, 32):
                rows = order[i : i + 32]
                loss = F.cross_entropy(F.linear(backbone(x[rows]), weight, bias), y[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                feats = backbone(x[300:800])
                accuracy = (F.linear(feats, weight, bias).argmax(1) == y[300:800]).float().mean().item()
            print(
                f"{kind} epoch {epoch}: loss {loss.item():.3f}, held-out accuracy {accuracy:.3f}, "
                f"feature norm {feats.norm(dim=1).mean().item():.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
