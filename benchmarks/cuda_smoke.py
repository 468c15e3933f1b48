"""CUDA checks of the paths the CPU test suite cannot reach; run it on a GPU machine:

    PYTHONPATH=src python benchmarks/cuda_smoke.py

Every penalty in every mode on CUDA, with eager and compiled (Triton) kernels, against the same
call in float64 on the CPU; underflowing groups on CUDA (float32 squares underflow there);
decoupled L2 against AdamW under a GradScaler, fused and not; ``torch.compile(fullgraph=True)``
through ``reg()``; a `Stacked` model's members against models trained alone, and 64 members at
once against 64 runs alone (timed). Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from torchpenalty import L1, L2, ElasticNet, GroupLasso, Regularizer, SparseGroupLasso

DEVICE = "cuda"
PENALTIES = [
    L1(1e-3),
    L2(1e-2),
    ElasticNet(1e-3, 1e-2),
    GroupLasso(1e-2, "rows"),
    GroupLasso(1e-2, "cols"),
    GroupLasso(1e-2, "tensor"),
    SparseGroupLasso(1e-3, 1e-2, "rows"),
]
failures: list[str] = []


def check(name: str, ok: bool) -> None:
    print("ok  " if ok else "FAIL", name, flush=True)
    if not ok:
        failures.append(name)


def mlp(dtype: torch.dtype = torch.float32, device: str = DEVICE) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(1024, 10)).to(device, dtype)


def same_model_pair() -> tuple[nn.Module, nn.Module]:
    """A float64 CPU reference and a float32 CUDA copy, with the same random gradients."""
    ref, gpu = mlp(torch.float64, "cpu"), mlp()
    with torch.no_grad():
        for p, q in zip(ref.parameters(), gpu.parameters(), strict=True):
            q.copy_(p)
            p.grad = torch.randn_like(p)
            q.grad = p.grad.to(DEVICE, q.dtype)
    return ref, gpu


def close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    pairs = zip(a, b, strict=True)
    return all(torch.allclose(x.float(), y.cpu().float(), rtol=1e-4, atol=1e-5) for x, y in pairs)


def check_paths(backend: str, penalty) -> None:
    for op in ("value", "grad", "decay", "prox"):
        ref, gpu = same_model_pair()
        r, o = (
            Regularizer(ref, penalty, backend="eager"),
            Regularizer(gpu, penalty, backend=backend),
        )
        if op == "value":
            a, b = float(r.value()), float(o.value())
            check(f"{backend} {op} {penalty!r}", abs(a - b) <= 1e-4 * abs(a) + 1e-6)
            continue
        if op == "grad":
            r.add_to_grad_()
            o.add_to_grad_()
            ok = close([p.grad for p in ref.parameters()], [q.grad for q in gpu.parameters()])
        else:
            getattr(r, f"{op}_")(0.5)
            getattr(o, f"{op}_")(0.5)
            ok = close(list(ref.parameters()), list(gpu.parameters()))
        check(f"{backend} {op} {penalty!r}", ok)


def check_underflow() -> None:
    for groups in ("rows", "cols", "tensor"):
        w = torch.full((4, 3), 1e-30, device=DEVICE)
        pen = GroupLasso(0.1, groups)
        check(f"underflowing {groups} groups are zeroed", bool((pen.prox(w, 0.5) == 0).all()))
        check(f"a tiny {groups} group is not a zero group", int(pen.group_stats(w)[0]) == 0)


def check_adamw_under_gradscaler(fused: bool) -> None:
    a, b = mlp(), mlp()
    named = list(a.named_parameters())
    groups = [
        {"params": [p for n, p in named if n.endswith("weight")], "weight_decay": 0.05},
        {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
    ]
    opt_a = torch.optim.AdamW(groups, lr=1e-3, fused=fused)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3, fused=fused)
    Regularizer(b, L2(0.05)).attach(opt_b, mode="decoupled")
    scalers = torch.amp.GradScaler(), torch.amp.GradScaler()
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(64, 512, generator=g).to(DEVICE)
        y = torch.randint(0, 10, (64,), generator=g).to(DEVICE)
        for model, opt, scaler in zip((a, b), (opt_a, opt_b), scalers, strict=True):
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    diff = max(float((p - q).detach().abs().max()) for p, q in pairs)
    check(
        f"decoupled L2 == AdamW under GradScaler (fused={fused}), max diff {diff:.1e}", diff < 1e-5
    )


def check_compiled_loss() -> None:
    model = mlp()
    reg = Regularizer(model, ElasticNet(1e-4, 1e-3))

    @torch.compile(fullgraph=True)
    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y) + reg()

    x = torch.randn(32, 512, device=DEVICE)
    y = torch.randint(0, 10, (32,), device=DEVICE)
    loss = loss_fn(x, y)
    loss.backward()
    check("torch.compile(fullgraph=True) through reg() on CUDA", bool(torch.isfinite(loss)))


def check_stacked_members() -> None:
    """Members of a stack on CUDA end where the same models trained alone on CUDA end, and a
    stack of 64 of these MLPs steps faster than 64 steps of one (timed, printed)."""
    import copy
    import time

    from torchpenalty import Stacked, parse

    strengths = [1e-4, 1e-3, 1e-2, 1e-1]
    singles = [mlp() for _ in strengths]
    stacked = Stacked([copy.deepcopy(m) for m in singles])
    reg = Regularizer(stacked, "l1", strengths=strengths)
    opt = torch.optim.SGD(stacked.parameters(), lr=0.1, momentum=0.9)
    reg.attach(opt, mode="proximal")
    alone = []
    for m, s in zip(singles, strengths, strict=True):
        o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        Regularizer(m, parse("l1") * s).attach(o, mode="proximal")
        alone.append((m, o))
    k = len(strengths)
    for _ in range(3):
        x = torch.randn(k, 32, 512, device=DEVICE)
        y = torch.randint(0, 10, (k, 32), device=DEVICE)
        loss = F.cross_entropy(stacked(x).flatten(0, 1), y.flatten(), reduction="none")
        opt.zero_grad()
        loss.view(k, 32).mean(1).sum().backward()
        opt.step()
        for i, (m, o) in enumerate(alone):
            o.zero_grad()
            F.cross_entropy(m(x[i]), y[i]).backward()
            o.step()
    ok = all(
        torch.allclose(stacked.member_state_dict(i)[n], v, rtol=1e-4, atol=1e-6)
        for i, (m, _) in enumerate(alone)
        for n, v in m.state_dict().items()
    )
    check("stacked members on CUDA equal models trained alone (proximal l1, 4 strengths)", ok)

    def steps(net, inputs, labels, optimizer, count=50):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            out = net(inputs)
            loss = F.cross_entropy(out.reshape(-1, 10), labels.reshape(-1), reduction="sum")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    many = Stacked([mlp() for _ in range(64)])
    one = mlp()
    x64, y64 = (
        torch.randn(64, 64, 512, device=DEVICE),
        torch.randint(0, 10, (64, 64), device=DEVICE),
    )
    t_many = steps(many, x64, y64, torch.optim.SGD(many.parameters(), lr=0.01))
    t_one = steps(one, x64[0], y64[0], torch.optim.SGD(one.parameters(), lr=0.01))
    print(f"     64 members at once: {64 * t_one / t_many:.1f}x faster than 64 runs alone")
    check("a stack of 64 steps faster than 64 steps of one", t_many < 64 * t_one)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device here")
        return 2
    for backend in ("eager", "compile"):
        for penalty in PENALTIES:
            check_paths(backend, penalty)
    check_underflow()
    for fused in (False, True):
        check_adamw_under_gradscaler(fused)
    check_compiled_loss()
    check_stacked_members()
    print("FAILED: " + "; ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
