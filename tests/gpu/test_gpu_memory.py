"""Trial after trial in one process, as Ray Tune reuses it: GPU memory goes back each time."""

from __future__ import annotations

import pytest

from trainable.config import TrialConfig
from trainable.train import train

pytestmark = pytest.mark.gpu

TRIALS = 8
GROWTH = 0.15  # allocated after trial N vs after trial 2, as for RSS on CPU
# CUDA's own blocks that outlive a trial (cuBLAS workspaces beyond the warm-up's): well
# under one leaked MiniLM (its unquantized fp32 embeddings alone are 45 MiB).
SLACK = 32 * 2**20


def _warm_up_cublas() -> None:
    """Create the cuBLAS and cuBLASLt workspaces, which stay allocated for the process."""
    import torch

    layer = torch.nn.Linear(64, 64, device="cuda")
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            layer(torch.ones(8, 64, device="cuda")).sum().backward()
    x = torch.ones(64, 64, device="cuda")
    (x @ x).sum().item()  # plain fp32 matmul
    del layer, x
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def test_a_reused_process_gives_back_gpu_memory_after_each_trial(shared_data_dir, tmp_path):
    import torch

    _warm_up_cublas()
    allocated_before = torch.cuda.memory_allocated()
    reserved_before = torch.cuda.memory_reserved()
    allocated, reserved = [], []
    for i in range(TRIALS):
        # Shapes differ from trial to trial, as in a study.
        cfg = TrialConfig(data=str(shared_data_dir), quantization="4bit", accelerator="cuda",
                          max_train_samples=128, max_eval_samples=64, epochs=1,
                          lora_rank=(4, 8)[i % 2], max_length=(64, 128)[i // 2 % 2],
                          batch_size=(8, 16)[i // 4 % 2], seed=i,
                          output_dir=str(tmp_path / f"trial-{i}"))
        train(cfg, progress=False)
        allocated.append(torch.cuda.memory_allocated())
        reserved.append(torch.cuda.memory_reserved())

    mib = [round((a - allocated_before) / 2**20, 1) for a in allocated]
    message = f"allocated after each trial, above the start (MiB): {mib}"
    assert max(allocated[2:]) <= allocated[1] * (1 + GROWTH) + SLACK, message
    # Nothing of a finished trial stays allocated: model, optimizer state, batches.
    assert max(allocated) <= allocated_before + SLACK, message
    # The caching allocator hands its free blocks back too, for other trials on this GPU.
    assert max(reserved) <= reserved_before + 2 * SLACK, (
        f"reserved after each trial, above the start (MiB): "
        f"{[round((r - reserved_before) / 2**20, 1) for r in reserved]}")
