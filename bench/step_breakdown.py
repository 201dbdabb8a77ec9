"""Where a ``dvae train`` step's time goes: the MLPs alone vs the whole step, on binarized MNIST.

    python bench/step_breakdown.py --data-dir ../shared/data --latent 30x10
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from discrete_vae.config import TrainConfig
from discrete_vae.data import BatchIterator, load_dataset
from discrete_vae.recipe import build_model


def per_call_ms(fn: Callable[[torch.Tensor], object], batches: list[torch.Tensor], n: int) -> float:
    for i in range(20):
        fn(batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(n):
        fn(batches[i % len(batches)])
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--latent", default="30x10")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = TrainConfig.of(latent=args.latent)
    spec = config.model.latent_spec()
    model = build_model(config, 784)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    iterator = BatchIterator(load_dataset("binarized_mnist", args.data_dir).train, 100, 0)
    batches = [iterator.next() for _ in range(50)]

    def mlps(x: torch.Tensor) -> None:  # encoder, softmax, decoder, backward: the matrix work
        z = model.encoder(x).view(-1, spec.n, spec.k).softmax(-1).flatten(1)
        model.decoder(z).sum().backward()

    def forward_backward(x: torch.Tensor) -> None:
        loss = model(x, 0.9, 1).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def step(x: torch.Tensor) -> None:
        forward_backward(x)
        optimizer.step()

    result = {name: round(per_call_ms(fn, batches, args.steps), 3) for name, fn in
              (("mlps_forward_backward_ms", mlps), ("forward_backward_ms", forward_backward),
               ("step_ms", step))}
    print(json.dumps({"benchmark": "step-breakdown", "latent": args.latent, **result}))


if __name__ == "__main__":
    main()
