"""The machine's matmul ceiling: FLOP/s of a square fp32 matrix product (best of 3 rounds).

    python bench/matmul_flops.py
"""

from __future__ import annotations

import json
import time

import torch


def measure_matmul_flops(n: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of ``(n x n) @ (n x n)`` after warm-up; best of three rounds of ``repeats``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


if __name__ == "__main__":
    print(json.dumps({"benchmark": "matmul", "n": 2048, "threads": torch.get_num_threads(),
                      "flop_per_s": measure_matmul_flops()}))
