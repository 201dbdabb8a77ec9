"""The seeds' Gumbel-Softmax VAE training loop as published (seed 001), as a speed baseline.

Seed 001 (a PyTorch port of the Gumbel-Softmax VAE) trains a 784-512-256-(30x10) encoder with a
ReLU on its logits, straight-through Gumbel-Softmax samples built in Python, a mirrored decoder
ending in a sigmoid, ``binary_cross_entropy`` summed over pixels plus a KL to the uniform prior,
Adam 1e-3, batch 100, a ``DataLoader`` over a per-example dataset, ``loss.item()`` every step, a
temperature update every 100 batches that restarts each epoch, and a log line every 10 batches.
This file re-implements that loop faithfully (its bugs included) so that benchmarks can time it
beside ``dvae train`` on the same in-memory data. Two per-example data paths:

- ``pil``: what the published script's ``datasets.MNIST(transform=ToTensor())`` does per example
  on its in-memory uint8 images (PIL image, then a float tensor scaled by 1/255);
- ``tensor``: a ``TensorDataset`` over the float tensor (the cheapest per-example path).

    python bench/seed_loop.py --steps 300 --data-dir ../shared/data --data-path pil
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


class PilDataset(torch.utils.data.Dataset):
    """In-memory uint8 images served one at a time through PIL, as torchvision's MNIST does."""

    def __init__(self, images: torch.Tensor):
        self.images = (images * 255).to(torch.uint8).view(-1, 28, 28)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[i].numpy())
        array = np.array(image, dtype=np.uint8, copy=True)
        return torch.from_numpy(array).view(1, 28, 28).float().div(255), 0


class SeedVAE(nn.Module):
    def __init__(self, latent_dim: int, categorical_dim: int):
        super().__init__()
        self.n, self.k = latent_dim, categorical_dim
        d = latent_dim * categorical_dim
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 512), nn.Linear(512, 256), nn.Linear(256, d)
        self.fc4, self.fc5, self.fc6 = nn.Linear(d, 256), nn.Linear(256, 512), nn.Linear(512, 784)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc2(F.relu(self.fc1(x))))
        return F.relu(self.fc3(h))  # the published ReLU on the logits

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc6(F.relu(self.fc5(F.relu(self.fc4(z))))))

    def straight_through(self, logits: torch.Tensor, temp: float) -> torch.Tensor:
        u = torch.rand(logits.shape)
        y = F.softmax((logits - torch.log(-torch.log(u + 1e-20) + 1e-20)) / temp, dim=-1)
        index = y.max(dim=-1)[1]
        hard = torch.zeros_like(y).view(-1, self.k)
        hard.scatter_(1, index.view(-1, 1), 1)
        hard = (hard.view(*y.shape) - y).detach() + y
        return hard.view(-1, self.n * self.k)

    def forward(self, x: torch.Tensor, temp: float) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.encode(x.view(-1, 784))
        q_y = q.view(q.size(0), self.n, self.k)
        return self.decode(self.straight_through(q_y, temp)), F.softmax(q_y, -1).reshape(*q.size())


def seed_loss(recon: torch.Tensor, x: torch.Tensor, qy: torch.Tensor, k: int) -> torch.Tensor:
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum") / x.shape[0]
    kld = torch.sum(qy * torch.log(qy * k + 1e-20), dim=-1).mean()
    return bce + kld


def run_seed_loop(
    train: torch.Tensor,
    *,
    steps: int,
    seed: int = 1,
    latent_dim: int = 30,
    categorical_dim: int = 10,
    batch_size: int = 100,
    lr: float = 1e-3,
    data_path: str = "pil",
    warmup: int = 10,
) -> dict:
    """Time ``steps`` optimizer steps of the published loop (after ``warmup`` untimed ones)."""
    torch.manual_seed(seed)
    dataset = PilDataset(train) if data_path == "pil" else torch.utils.data.TensorDataset(
        train, torch.zeros(len(train))
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model = SeedVAE(latent_dim, categorical_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    log, done, start, loss_value = io.StringIO(), 0, 0.0, float("nan")
    while done < steps + warmup:
        temp = 1.0  # the published loop restarts the temperature every epoch
        for batch_idx, (data, _) in enumerate(loader):
            if done == warmup:
                start = time.perf_counter()
            optimizer.zero_grad()
            recon, qy = model(data, temp)
            loss = seed_loss(recon, data, qy, categorical_dim)
            loss.backward()
            loss_value = loss.item()
            optimizer.step()
            if batch_idx % 100 == 1:
                temp = np.maximum(temp * np.exp(-3e-5 * batch_idx), 0.5)
            if batch_idx % 10 == 0:
                log.write(f"Train [{batch_idx * len(data)}/{len(dataset)}]\tLoss: {loss_value:.6f}\n")
            done += 1
            if done == steps + warmup:
                break
    seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds,
            "final_loss": loss_value, "data_path": data_path}


def main() -> None:
    from discrete_vae.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--data-path", choices=["pil", "tensor"], default="pil")
    args = parser.parse_args()
    train = load_dataset("binarized_mnist", args.data_dir).train
    print(json.dumps(run_seed_loop(train, steps=args.steps, data_path=args.data_path)))


if __name__ == "__main__":
    main()
