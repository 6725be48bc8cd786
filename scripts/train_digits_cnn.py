"""Train the digits CNN of ``iua_widgets.models.digits`` and write its weights as npz.

Usage::

    python scripts/train_digits_cnn.py [--output PATH] [--epochs N] [--seed S]

Seeded (torch, shuffling, initialisation) and run on the CPU. The script
prints the test accuracy on the fixed test split and writes the state_dict
arrays to ``iua_widgets/models/digits_cnn.npz``, or to the path given by ``--output``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from iua_widgets.models.digits import (
    WEIGHTS_FILE,
    build_digits_cnn,
    digits_dataset,
    digits_loader,
    save_state_dict,
)

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "iua_widgets" / "models" / WEIGHTS_FILE


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Return the fraction of inputs of ``loader`` whose top logit is the label."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(dim=1) == labels).sum())
            total += len(labels)
    return correct / total


def train(epochs: int, seed: int, learning_rate: float, batch_size: int) -> nn.Module:
    """Train a fresh digits CNN with Adam on the train split and return it in eval mode."""
    torch.manual_seed(seed)
    model = build_digits_cnn()
    shuffled = DataLoader(
        digits_dataset("train"),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_function = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        total_loss = 0.0
        for images, labels in shuffled:
            optimizer.zero_grad()
            loss = loss_function(model(images), labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(labels)
        print(f"epoch {epoch + 1:2d}: train loss {total_loss / len(shuffled.dataset):.4f}")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="npz file to write")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the train split")
    parser.add_argument("--seed", type=int, default=0, help="seed of torch and of shuffling")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per training step")
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    model = train(args.epochs, args.seed, args.lr, args.batch_size)
    seconds = time.perf_counter() - start
    print(f"trained in {seconds:.1f} s on {torch.get_num_threads()} CPU threads")
    print(f"train accuracy {accuracy(model, digits_loader(split='train')):.4f}")
    print(f"test accuracy  {accuracy(model, digits_loader(split='test')):.4f}")
    save_state_dict(model, args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
