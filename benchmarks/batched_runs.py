"""How much faster is training K runs at once (one `Stacked` model) than one after another?

    python benchmarks/batched_runs.py                 # members 1..64 and the default sweep
    python benchmarks/batched_runs.py --skip-sweep    # members only (about a minute)
    python benchmarks/batched_runs.py --device cuda   # on a GPU

Two measurements, each against its floor taken side by side in the same run:

1. **Members.** For K = 1, 2, 4, ..., 64, one training epoch on the bundled digits (the CLI's
   default MLP 64-200-100-10, SGD with momentum, batch 64, ``l2`` in loss mode at K strengths)
   of K runs as one stack, against K epochs of one run alone (the floor: the sequential cost).
   Each K runs in a fresh process; its peak memory is the process's peak resident set (CPU) or
   ``torch.cuda.max_memory_allocated`` (GPU) above what it held before training.
2. **The default sweep.** ``torchpenalty sweep --reg l2 --lams 1e-5:1e-1:11 --seeds 3`` (33
   runs), wall time of the whole command, batched (the default) against ``--sequential``.

Writes ``benchmarks/results/batched_runs-<device>.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEMBERS = (1, 2, 4, 8, 16, 32, 64)

PROBE = r"""
import json, resource, sys, time
import torch
from torch.nn import functional as F
import torchpenalty as tp
from torchpenalty.experiments import data as datasets
from torchpenalty.experiments.training import TrainConfig, build_model

k, device, epochs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(torch.get_num_threads())
data = datasets.load_digits()
x, y = data.x_train.to(device), data.y_train.to(device)
config = TrainConfig(device=device)
strengths = torch.logspace(-5, -1, k).tolist()

def epoch_of(step):
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g).to(device)
        for i in range(0, len(x), 64):
            step(order[i : i + 64])
    if device.startswith("cuda"):
        torch.cuda.synchronize()

def stacked():
    net = tp.Stacked([build_model(data, config, s) for s in range(k)]).to(device)
    reg = tp.Regularizer(net, "l2", strengths=strengths)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    def step(idx):
        idx = idx.expand(k, -1)
        out = net(x[idx])
        loss = F.cross_entropy(out.flatten(0, 1), y[idx].flatten(), reduction="none")
        loss = loss.view(k, -1).mean(1).sum() + reg()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step

def alone():
    net = build_model(data, config, 0)
    reg = tp.Regularizer(net, tp.parse("l2") * strengths[0])
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    def step(idx):
        loss = F.cross_entropy(net(x[idx]), y[idx]) + reg()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step

def peak():
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

# the floor first (one run alone, K times over: what --sequential costs), then the stack
step = alone()
epoch_of(step)  # warm-up
t = time.perf_counter(); epoch_of(step); one = time.perf_counter() - t
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
before = peak()
step = stacked()
epoch_of(step)  # warm-up
t = time.perf_counter(); epoch_of(step); together = time.perf_counter() - t
print(json.dumps({"members": k, "alone_s": one * k, "stacked_s": together,
                  "peak_bytes": peak() - before}))
"""


def members_table(device: str, epochs: int) -> list[dict]:
    rows = []
    for k in MEMBERS:
        out = (
            subprocess.run(
                [sys.executable, "-c", PROBE, str(k), device, str(epochs)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        row = json.loads(out)
        row["speedup"] = row["alone_s"] / row["stacked_s"]
        rows.append(row)
        print(
            f"K={k:3d}: {k} runs alone {row['alone_s']:.2f} s, at once {row['stacked_s']:.2f} s "
            f"-> {row['speedup']:.2f}x; peak memory +{row['peak_bytes'] / 2**20:.0f} MiB",
            flush=True,
        )
    return rows


def sweep_times(device: str) -> dict:
    flags = ["sweep", "--reg", "l2", "--lams", "1e-5:1e-1:11", "--seeds", "3", "--quiet"]
    flags += ["--device", device]
    times = {}
    for name, extra in (("sequential", ["--sequential"]), ("batched", [])):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "torchpenalty", *flags, *extra, "--out", out],
                check=True,
                capture_output=True,
            )
            times[name] = time.perf_counter() - start
            print(f"default sweep, {name}: {times[name]:.1f} s", flush=True)
    return {
        "command": "torchpenalty " + " ".join(flags),
        "sequential_s": times["sequential"],
        "batched_s": times["batched"],
        "speedup": times["sequential"] / times["batched"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import torch

    result = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "members": members_table(args.device, args.epochs),
    }
    if not args.skip_sweep:
        result["default_sweep"] = sweep_times(args.device)
        print(f"default sweep speed-up: {result['default_sweep']['speedup']:.2f}x")
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    out = args.out or Path(__file__).parent / "results" / f"batched_runs-{kind}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
