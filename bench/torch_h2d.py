#!/usr/bin/env python3
"""Reference for the GPU benchmark: PyTorch's host-to-device copy of 256 MiB from pinned and
from pageable memory, 8 copies each after one warm-up, on the same machine as
`shardcache-bench --only gpu` (bench/results/gpu.md)."""

import time

import torch

n = 256 << 20
d = torch.empty(n, dtype=torch.uint8, device="cuda")
for pin in (True, False):
    h = torch.randint(0, 255, (n,), dtype=torch.uint8)
    if pin:
        h = h.pin_memory()
    d.copy_(h)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(8):
        d.copy_(h, non_blocking=pin)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    print(f"torch H2D {'pinned' if pin else 'pageable'} 256 MiB: {8 * n / dt / 1e9:.2f} GB/s")
