"""How fast is each way of applying a penalty, against the tutorials' way and the memory floor?

    python benchmarks/penalty_paths.py                 # all sets, prints a table, writes JSON
    python benchmarks/penalty_paths.py --sets resnet18 --repeats 9

Every figure is the median of ``--repeats`` timings after warm-up, all contenders measured in
the same run on the same tensors (every parameter of the model is regularized):

- tutorial: ``(lam * sum(p.abs().sum() for p in params)).backward()`` (L2: ``lam/2 * p.pow(2)``);
- torch.optim: the extra cost of ``SGD.step()`` with ``weight_decay`` over without (L2 only);
- torchpenalty: loss mode (``reg()`` + backward), gradient mode (``reg.add_to_grad_()``),
  decoupled (``reg.decay_(lr)``), proximal (``reg.prox_(lr)``) and ``reg.value()``;
- floor: one compiled single pass over the same tensors: ``g.add_(w, alpha=c)`` for gradient
  mode, ``w.mul_(c)`` for decoupled / proximal, ``w.abs().sum()`` for the value; on a GPU, the
  same bytes at the bandwidth of a device-to-device copy measured in the same run. Group
  penalties (``--penalties group``: group lasso on rows, cols, the whole tensor and callable
  groups (`row_pairs`, `blocks_of_16`, `kernel_windows`, `unequal_rows`, `scattered`), sparse
  group lasso on rows, cols, `kernel_windows` and `scattered`, applied to the weights,
  ``ndim >= 2``) need their group norms first: their floor is one reading pass more (the value
  floor) before the update pass. Constraints (``--penalties constraint``: max-norm of rows and
  cols, unit-norm and min-max-norm of rows) time their projection, ``reg.project_()``, against
  that same decoupled floor.
- indexed floor: groups given by a group index per weight, in no pattern (`scattered`), cannot
  be normed without reading that index and touching each weight's group entry (a random
  access): their rows are also timed against the same passes over the weights, their int32
  index and a table of one entry per group, ``(w.abs() * table[index]).sum()`` for the norms
  and ``w.mul_(table[index] * c)`` (``g.add_(w * table[index] * c)``) for the update; on a GPU,
  the index's bytes added to the bandwidth floor.

- backends (``--backends``, group and constraint families): every path of a group penalty runs
  twice, on the eager kernels (the default below 2**20 elements a bucket, and wherever
  compilation fails; nothing compiled) and on the compiled ones (public ``torch.compile``). Each
  row also gives its ratio to one *row-norm pass*: ``torch.linalg.vector_norm(w.view(rows, -1),
  dim=1)`` over the same tensors, eager, the reference of the eager path (the ``conv256`` set
  is the single 256x256x3x3 conv weight that criterion names).

Peak extra memory is what the call allocates beyond its inputs (CPU: from the profiler's memory
events; CUDA: ``torch.cuda.max_memory_allocated``). The end-to-end rows time one training step of
the ResNet-18 on a random batch with and without each mode.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import SETS, ResNet18

import torchpenalty
from torchpenalty import (
    L1,
    L2,
    GroupLasso,
    MaxNorm,
    MinMaxNorm,
    Regularizer,
    SparseGroupLasso,
    UnitNorm,
)
from torchpenalty.experiments.memory import peak_extra_bytes
from torchpenalty.kernels import layouts
from torchpenalty.penalties.group import _callable_groups as callable_groups

LAM = 1e-4
LR = 0.1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    for _ in range(3):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def paired_ms(fn, floor_fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """``(median ms of fn, median of per-pair time ratios fn / floor_fn)``, the two timed
    alternately so that drifts of a shared machine hit both alike."""
    for _ in range(3):
        fn()
        floor_fn()
    times, ratios = [], []
    for _ in range(repeats):
        a = _once(fn, device)
        b = _once(floor_fn, device)
        times.append(a)
        ratios.append(a / b)
    return statistics.median(times), statistics.median(ratios)


def _once(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def peak_extra_mb(fn: Callable[[], object], device: torch.device) -> float:
    return peak_extra_bytes(fn, device) / 1e6


# -- floors: one compiled pass over the same tensors -------------------------------------------
def _floor_grad(gs, ws, c):
    for g, w in zip(gs, ws, strict=True):
        g.add_(w * c)


def _floor_weights(ws, c):
    for w in ws:
        w.mul_(c)


def _floor_value(ws):
    return torch.stack([w.abs().sum() for w in ws]).sum()


def _floor_indexed_value(ws, index, tables):
    return torch.stack(
        [(w.reshape(-1).abs() * t[i]).sum() for w, i, t in zip(ws, index, tables, strict=True)]
    ).sum()


def _floor_indexed_weights(ws, index, tables, c):
    for w, i, t in zip(ws, index, tables, strict=True):
        w.view(-1).mul_(t[i] * c)


def _floor_indexed_grad(gs, ws, index, tables, c):
    for g, w, i, t in zip(gs, ws, index, tables, strict=True):
        g.view(-1).add_(w.view(-1) * t[i] * c)


def compiled(fn):
    return torch.compile(fn, fullgraph=True, dynamic=False)


def row_pairs(w: torch.Tensor) -> torch.Tensor:
    """Callable groups: pairs of consecutive output units (channel-pair pruning)."""
    index = torch.arange(w.shape[0], device=w.device) // 2
    return index.view(-1, *[1] * (w.ndim - 1)).expand(w.shape)


def blocks_of_16(w: torch.Tensor) -> torch.Tensor:
    """Callable groups: blocks of 16 consecutive weights (1x16 block sparsity)."""
    return torch.arange(w.numel(), device=w.device).view(w.shape) // 16


def kernel_windows(w: torch.Tensor) -> torch.Tensor:
    """Callable groups: each (out, in) kernel window of a conv, 9 weights for 3x3 (kernel-level
    sparsity); each weight of a Linear."""
    window = w[0, 0].numel()
    return torch.arange(w.numel(), device=w.device).view(w.shape) // window


def unequal_rows(w: torch.Tensor) -> torch.Tensor:
    """Callable groups of unequal size: output units in runs of 1, 2, 1, 2, ... rows."""
    rows = torch.arange(w.shape[0], device=w.device)
    return ((rows * 2) // 3).view(-1, *[1] * (w.ndim - 1)).expand(w.shape)


def scattered(w: torch.Tensor) -> torch.Tensor:
    """Callable groups in no pattern: a fixed random split into groups of 64 weights."""
    generator = torch.Generator().manual_seed(w.numel())
    labels = torch.randperm(w.numel(), generator=generator) % max(1, w.numel() // 64)
    return labels.view(w.shape).to(w.device)


#: the penalty families ``--penalties`` names
FAMILIES = {
    "elementwise": (L2(LAM), L1(LAM)),
    "group": (
        GroupLasso(LAM, "rows"),
        GroupLasso(LAM, "cols"),
        GroupLasso(LAM, "tensor"),
        GroupLasso(LAM, row_pairs),
        GroupLasso(LAM, blocks_of_16),
        GroupLasso(LAM, kernel_windows),
        GroupLasso(LAM, unequal_rows),
        GroupLasso(LAM, scattered),
        SparseGroupLasso(LAM, LAM, "rows"),
        SparseGroupLasso(LAM, LAM, "cols"),
        SparseGroupLasso(LAM, LAM, kernel_windows),
        SparseGroupLasso(LAM, LAM, scattered),
    ),
    "constraint": (
        MaxNorm(0.5, "rows"),
        MaxNorm(0.5, "cols"),
        UnitNorm("rows"),
        MinMaxNorm(0.1, 0.5, 0.5, "rows"),
    ),
}
#: families whose tensors are the weights (ndim >= 2) and whose floor starts with a norms pass
GROUPED = ("group", "constraint")


def bench_set(
    name: str,
    device: torch.device,
    repeats: int,
    families: list[str] | None = None,
    backends: tuple[str, ...] = ("eager", "compile"),
) -> list[dict]:
    torch.manual_seed(0)
    model = SETS[name]().to(device)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    rows = []
    for family in families or ["elementwise"]:
        grouped = family in GROUPED
        chosen = [p for p in params if p.ndim >= 2] if grouped else params
        ws = [p.detach() for p in chosen]
        gs = [p.grad for p in chosen]
        if device.type == "cuda":  # floors from the copy bandwidth: numbers, not functions
            floors: dict = bandwidth_floors(ws, repeats, device, norms_pass=grouped)
        else:
            floors = cpu_floors(ws, gs, norms_pass=grouped)
        among = "weights" if grouped else "all"
        for pen in FAMILIES[family]:
            index = weight_index(pen, ws) if grouped else None
            indexed = None
            if index is not None:
                indexed = (
                    bandwidth_floors(ws, repeats, device, norms_pass=True, index=index)
                    if device.type == "cuda"
                    else cpu_indexed_floors(ws, gs, index)
                )
            for backend in backends if grouped else ("auto",):
                rows += bench_penalty(
                    name, model, pen, floors, repeats, among, indexed, backend, row_norms(ws)
                )
    return rows


def row_norms(ws: list) -> Callable[[], object]:
    """One row-norm pass over ``ws``, eager: the reference of the eager group path."""
    views = [w.view(w.shape[0], -1) for w in ws]
    return lambda: [torch.linalg.vector_norm(v, dim=1) for v in views]


def weight_index(penalty, ws: list) -> list | None:
    """The int32 group index of every weight of ``ws`` where ``penalty``'s groups are a
    callable's with no pattern (one run of one weight per index: `scattered`), else None."""
    groups = getattr(penalty, "groups", None)
    if not callable(groups):
        return None
    index = []
    for w in ws:
        lay = callable_groups(groups, w)  # what the regularizer finds for the fused kernels
        if not isinstance(lay, layouts.Indexed) or lay.group_of.numel() != w.numel():
            return None
        index.append(lay.group_of)
    return index


def cpu_indexed_floors(ws: list, gs: list, index: list) -> dict:
    """`cpu_floors` of groups given by a group index per weight: each pass also reads the index
    and one entry per weight from a table of one per group."""
    c = torch.tensor(1.0, device=ws[0].device)
    tables = [
        torch.ones(int(i.max()) + 1, dtype=w.dtype, device=w.device)
        for w, i in zip(ws, index, strict=True)
    ]

    def norms() -> object:
        return compiled_indexed_value(ws, index, tables)

    return {
        "grad": lambda: (norms(), compiled_indexed_grad(gs, ws, index, tables, c * 0)),
        "weights": lambda: (norms(), compiled_indexed_weights(ws, index, tables, c)),
        "value": norms,
    }


def cpu_floors(ws: list, gs: list, norms_pass: bool) -> dict:
    """Compiled single passes over ``ws`` (and ``gs``); with ``norms_pass`` each update floor
    starts with the value floor's reading pass (a group penalty needs its norms first)."""
    c = torch.tensor(1.0, device=ws[0].device)

    def norms() -> object:
        return compiled_floor_value(ws) if norms_pass else None

    return {
        "grad": lambda: (norms(), compiled_floor_grad(gs, ws, c * 0)),
        "weights": lambda: (norms(), compiled_floor_weights(ws, c)),
        "value": lambda: compiled_floor_value(ws),
    }


def bench_penalty(
    name,
    model,
    penalty,
    floors: dict,
    repeats: int,
    among: str,
    indexed: dict | None = None,
    backend: str = "auto",
    row_norm_pass: Callable[[], object] | None = None,
) -> list[dict]:
    """Every path of ``penalty`` on ``backend`` against ``floors`` (and against ``indexed``, the
    floors of groups given by a group index per weight, and ``row_norm_pass``, where given)."""
    reg = Regularizer(model, penalty, among=among, backend=backend)
    params = [p for _, p in reg.named_parameters()]
    device = params[0].device
    is_l2 = isinstance(penalty, L2)

    def tutorial():
        if isinstance(penalty, L1 | L2):
            terms = [(p * p).sum() for p in params] if is_l2 else [p.abs().sum() for p in params]
            ((LAM / 2 if is_l2 else LAM) * sum(terms)).backward()
        else:  # the penalty's own value, through autograd
            sum(penalty.value(p) for p in params).backward()

    def loss_mode():
        reg().backward()

    def measure(fn, floor: str, against: dict) -> tuple[float, float]:
        """(ms, ratio to the floor), timed alternately with the floor where it is a function."""
        if callable(against[floor]):
            return paired_ms(fn, against[floor], repeats, device)
        ms = median_ms(fn, repeats, device)
        return ms, ms / against[floor]

    paths = {
        "tutorial autograd": (tutorial, "grad"),
        "loss mode": (loss_mode, "grad"),
        "gradient mode": (reg.add_to_grad_, "grad"),
        "decoupled": (lambda: reg.decay_(LR), "weights"),
        "proximal": (lambda: reg.prox_(LR * 1e-6), "weights"),  # tiny step: weights survive
        "value()": (reg.value, "value"),
    }
    if penalty.constraints():  # nothing to add to a loss or gradient: the projection only
        paths = {"projection": (reg.project_, "weights")}
    measured = {label: measure(fn, floor, floors) for label, (fn, floor) in paths.items()}
    to_indexed = {
        label: measure(fn, floor, indexed)[1]
        for label, (fn, floor) in paths.items()
        if indexed is not None and label != "tutorial autograd"
    }
    to_row_norms = {
        label: paired_ms(fn, row_norm_pass, repeats, device)[1]
        for label, (fn, _) in paths.items()
        if row_norm_pass is not None and label not in ("tutorial autograd", "loss mode")
    }
    tutorial_ms = measured["tutorial autograd"][0] if "tutorial autograd" in measured else None
    rows = []
    for label, (fn, floor) in paths.items():
        ms, ratio = measured[label]
        faster = tutorial_ms / ms if floor == "grad" and tutorial_ms else None
        rows.append(row(name, penalty, label, ms, ratio, faster, peak_extra_mb(fn, device)))
        rows[-1]["ratio_to_indexed_floor"] = to_indexed.get(label)
        rows[-1]["ratio_to_row_norm_pass"] = to_row_norms.get(label)
        rows[-1]["backend"] = backend
        if label == "tutorial autograd" and is_l2:
            extra = torch_optim_extra_ms(params, repeats, device)
            ratio = extra / (measured["gradient mode"][0] / measured["gradient mode"][1])
            rows.append(
                row(
                    name,
                    penalty,
                    "torch.optim weight_decay",
                    extra,
                    ratio,
                    tutorial_ms / extra,
                    None,
                )
            )
    if row_norm_pass is not None:
        ms = median_ms(row_norm_pass, repeats, device)
        rows.append(row(name, penalty, "row-norm pass (eager)", ms, None, None, None))
    for prefix, against in (("floor", floors), ("indexed floor", indexed or {})):
        for floor, f in against.items():
            ms = median_ms(f, repeats, device) if callable(f) else f
            rows.append(row(name, penalty, f"{prefix} ({floor})", ms, 1.0, None, None))
    return rows


compiled_floor_grad = compiled(_floor_grad)
compiled_floor_weights = compiled(_floor_weights)
compiled_floor_value = compiled(_floor_value)
compiled_indexed_value = compiled(_floor_indexed_value)
compiled_indexed_weights = compiled(_floor_indexed_weights)
compiled_indexed_grad = compiled(_floor_indexed_grad)


def bandwidth_floors(
    ws, repeats, device, norms_pass: bool = False, index: list | None = None
) -> dict[str, float]:
    """GPU floors from the memory bandwidth of a device-to-device copy of the same bytes:
    gradient mode moves 3x the weights' bytes, decoupled / proximal 2x, the value 1x (group
    penalties: one reading pass more for the group norms; with a group ``index`` per weight,
    each pass reads it too)."""
    nbytes = sum(w.numel() * w.element_size() for w in ws)
    index_bytes = sum(i.numel() * i.element_size() for i in index or [])
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), repeats, device)
    per_byte_ms = copy_ms / (2 * nbytes)  # a copy reads and writes every byte
    print(f"device-to-device copy: {2 * nbytes / copy_ms / 1e6:.0f} GB/s")
    extra = (nbytes + index_bytes) * per_byte_ms if norms_pass else 0.0
    return {
        "grad": (3 * nbytes + index_bytes) * per_byte_ms + extra,
        "weights": (2 * nbytes + index_bytes) * per_byte_ms + extra,
        "value": (nbytes + index_bytes) * per_byte_ms,
    }


def torch_optim_extra_ms(params, repeats, device) -> float:
    """Extra time of SGD.step() with weight_decay over the same step without."""
    with_wd = torch.optim.SGD(params, lr=0.0, weight_decay=LAM, foreach=True)
    without = torch.optim.SGD(params, lr=0.0, weight_decay=0.0, foreach=True)
    pairs = [
        (median_ms(with_wd.step, 3, device), median_ms(without.step, 3, device))
        for _ in range(max(repeats // 3, 3))
    ]
    return statistics.median(a - b for a, b in pairs)


def row(set_name, penalty, path, ms, ratio, faster, peak_mb) -> dict:
    return {
        "set": set_name,
        "penalty": repr(penalty),
        "path": path,
        "ms": ms,
        "ratio_to_floor": ratio,
        "speedup_over_tutorial": faster,
        "peak_extra_mb": peak_mb,
    }


def end_to_end(device: torch.device, repeats: int, batch: int, size: int) -> list[dict]:
    """One SGD training step of ResNet-18 on a random batch, with and without each mode."""
    torch.manual_seed(0)
    model = ResNet18(classes=10).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    reg = Regularizer(model, L1(LAM))
    handles = {}

    def step(mode: str | None) -> None:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if mode == "loss":
            loss = loss + reg()
        loss.backward()
        opt.step()

    modes = [None, "loss", "grad", "decoupled", "proximal"]
    times: dict = {m: [] for m in modes}
    for _ in range(repeats):  # interleaved, so drifts hit every mode alike
        for m in modes:
            if m in ("grad", "decoupled", "proximal"):
                handles[m] = reg.attach(opt, mode=m)
            times[m].append(median_ms(lambda m=m: step(m), 1, device))
            if m in handles:
                handles.pop(m).remove()
    base = statistics.median(times[None])
    return [
        {
            "mode": m or "none",
            "step_ms": statistics.median(t),
            "overhead_percent": 100 * (statistics.median(t) - base) / base,
        }
        for m, t in times.items()
    ]


def print_table(rows: list[dict], e2e: list[dict]) -> None:
    header = (
        f"{'set':12s} {'penalty':58s} {'backend':8s} {'path':26s} {'ms':>9s} {'x floor':>8s} "
        f"{'x faster':>9s} {'peak MB':>8s} {'x indexed':>9s} {'x rownorm':>9s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        print(
            f"{r['set']:12s} {r['penalty']:58s} {r.get('backend', ''):8s} {r['path']:26s} "
            f"{r['ms']:9.3f} {fmt(r['ratio_to_floor'], '8.2f'):>8s} "
            f"{fmt(r['speedup_over_tutorial'], '9.1f'):>9s} "
            f"{fmt(r['peak_extra_mb'], '8.1f'):>8s} "
            f"{fmt(r.get('ratio_to_indexed_floor'), '9.2f'):>9s} "
            f"{fmt(r.get('ratio_to_row_norm_pass'), '9.2f'):>9s}"
        )
    if e2e:
        print("\nend to end: one SGD step of ResNet-18 with L1(1e-4)")
        for r in e2e:
            print(
                f"  {r['mode']:10s} {r['step_ms']:9.1f} ms  overhead {r['overhead_percent']:+6.2f}%"
            )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="resnet18,transformer,mlp")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--penalties",
        default="elementwise,group",
        help=f"penalty families, comma-separated: {', '.join(FAMILIES)}",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--backends",
        default="eager,compile",
        help="kernel backends of the group and constraint families, comma-separated",
    )
    parser.add_argument("--e2e-batch", type=int, default=16)
    parser.add_argument("--e2e-size", type=int, default=224, help="image side of the e2e batch")
    parser.add_argument("--e2e-repeats", type=int, default=9)
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON file (default benchmarks/results/penalty_paths-<device>.json)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    families = args.penalties.split(",")
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown penalty families {unknown}; choose from {', '.join(FAMILIES)}")
    backends = tuple(args.backends.split(","))
    rows = [
        r
        for name in args.sets.split(",")
        for r in bench_set(name, device, args.repeats, families, backends)
    ]
    e2e = (
        end_to_end(device, args.e2e_repeats, args.e2e_batch, args.e2e_size)
        if args.e2e_repeats
        else []
    )
    print_table(rows, e2e)
    out = (
        args.out
        or Path(__file__).resolve().parent / "results" / f"penalty_paths-{device.type}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "torch": torch.__version__,
        "torchpenalty": torchpenalty.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "backend": torchpenalty.kernels.get_backend(),
        "repeats": args.repeats,
        "command": " ".join(["python", "benchmarks/penalty_paths.py", *(argv or sys.argv[1:])]),
    }
    out.write_text(json.dumps({"info": info, "rows": rows, "end_to_end": e2e}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
