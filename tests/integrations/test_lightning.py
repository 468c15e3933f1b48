"""`RegularizerCallback` in a real ``lightning`` Trainer: after ``fit`` the weights equal a plain
loop's with the same regularizer attached (float64, every mode), under gradient accumulation,
manual optimization with two optimizers, 16-mixed / bf16-mixed precision, DDP, and a resumed
checkpoint; logging and bad input."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

L = pytest.importorskip("lightning")
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402

import torchpenalty as tp  # noqa: E402
from torchpenalty.integrations.lightning import RegularizerCallback  # noqa: E402

from ..distributed_helpers import spawn  # noqa: E402

PENALTY = "l1(1e-2) + l2(1e-2)"
ROWS, BATCH = 48, 12


def data(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(ROWS, 8, generator=g, dtype=dtype), torch.randint(0, 3, (ROWS,), generator=g)


def net(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).to(dtype)


def loader(dtype=torch.float64, batch=BATCH):
    x, y = data(dtype)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


class Classifier(L.LightningModule):
    def __init__(self, callback=None, dtype=torch.float64, optimizer=sgd):
        super().__init__()
        self.net = net(dtype)
        self.callback = callback
        self.make_optimizer = optimizer

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.callback is not None and self.callback.mode == "loss":
            loss = loss + self.callback.regularizer()
        return loss

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())


def trainer(callback, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    return L.Trainer(callbacks=[callback], **{**options, **kwargs})


def plain_loop(mode, *, epochs=2, accumulate=1, optimizer=sgd, schedule=None, dtype=torch.float64):
    """The same training without Lightning: a Regularizer attached to a torch optimizer."""
    model = net(dtype)
    opt = optimizer(model.parameters())
    reg = tp.Regularizer(model, PENALTY, schedule=schedule)
    if mode != "loss":
        reg.attach(opt, mode)
    elif schedule is not None:
        opt.register_step_post_hook(lambda *a: reg.step())
    for _ in range(epochs):
        for i, (x, y) in enumerate(loader(dtype)):
            loss = F.cross_entropy(model(x), y)
            if mode == "loss":
                loss = loss + reg()
            (loss / accumulate).backward()
            if (i + 1) % accumulate == 0:
                opt.step()
                opt.zero_grad()
    return model, reg


def assert_same_weights(a: nn.Module, b: nn.Module, atol=1e-10):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("mode", ["grad", "decoupled", "proximal", "loss"])
def test_fit_equals_a_plain_loop_in_every_mode(mode):
    callback = RegularizerCallback(PENALTY, mode=mode)
    model = Classifier(callback)
    trainer(callback).fit(model, loader())
    reference, reg = plain_loop(mode)
    assert_same_weights(model.net, reference)
    torch.testing.assert_close(callback.regularizer.value(), reg.value(), atol=1e-12, rtol=0)


def test_logs_penalty_and_exact_zero_fraction():
    callback = RegularizerCallback("l1(0.05)", mode="proximal")
    model = Classifier(callback)
    fit = trainer(callback)
    fit.fit(model, loader())
    metrics = fit.callback_metrics
    report = callback.regularizer.report()
    assert metrics["penalty"].item() == pytest.approx(report.total_value, rel=1e-12)
    assert report.zero_fraction > 0  # proximal L1 at this strength zeroes weights exactly
    assert metrics["penalty_zero_fraction"].item() == report.zero_fraction


def test_adam_decoupled_with_gradient_accumulation():
    def adam(params):
        return torch.optim.Adam(params, lr=1e-2)

    callback = RegularizerCallback(PENALTY, mode="decoupled")
    model = Classifier(callback, optimizer=adam)
    trainer(callback, accumulate_grad_batches=2).fit(model, loader())
    reference, _ = plain_loop("decoupled", accumulate=2, optimizer=adam)
    assert_same_weights(model.net, reference)


class TwoOptimizers(L.LightningModule):
    """Manual optimization: each layer has its own optimizer (Lightning 2 requires manual
    optimization for several optimizers)."""

    def __init__(self, callback):
        super().__init__()
        self.net = net()
        self.callback = callback
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        first, second = self.optimizers()
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(F.cross_entropy(self.net(x), y))
        first.step()
        second.step()

    def configure_optimizers(self):
        return sgd(self.net[0].parameters()), torch.optim.Adam(self.net[2].parameters(), lr=1e-2)


@pytest.mark.parametrize("mode", ["grad", "proximal"])
def test_manual_optimization_with_two_optimizers(mode):
    callback = RegularizerCallback(PENALTY, mode=mode)
    model = TwoOptimizers(callback)
    trainer(callback).fit(model, loader())

    reference = net()
    first = sgd(reference[0].parameters())
    second = torch.optim.Adam(reference[2].parameters(), lr=1e-2)
    reg = tp.Regularizer(reference, PENALTY)
    reg.attach(first, mode, partial=True)
    reg.attach(second, mode, partial=True)
    for _ in range(2):
        for x, y in loader():
            first.zero_grad()
            second.zero_grad()
            F.cross_entropy(reference(x), y).backward()
            first.step()
            second.step()
    assert_same_weights(model.net, reference)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_plugins(precision):
    dtype = torch.float16 if precision == "16-mixed" else torch.bfloat16
    callback = RegularizerCallback(PENALTY, mode="grad")
    model = Classifier(callback, dtype=torch.float32)
    plugin = MixedPrecision(precision, "cpu")  # 16-mixed brings its GradScaler
    trainer(callback, plugins=[plugin]).fit(model, loader(torch.float32))

    reference = net(torch.float32)
    opt = sgd(reference.parameters())
    tp.Regularizer(reference, PENALTY).attach(opt, "grad")
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "16-mixed")
    for _ in range(2):
        for x, y in loader(torch.float32):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=dtype):
                loss = F.cross_entropy(reference(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    assert_same_weights(model.net, reference, atol=1e-6)


def test_resumed_fit_continues_exactly(tmp_path):
    schedule = tp.schedules.linear(6, start=1.0, end=0.0)  # the step count matters
    straight = RegularizerCallback(PENALTY, mode="decoupled", schedule=schedule)
    whole = Classifier(straight)
    trainer(straight).fit(whole, loader())

    first = RegularizerCallback(PENALTY, mode="decoupled", schedule=schedule)
    half = Classifier(first)
    fit = trainer(first, max_epochs=1)
    fit.fit(half, loader())
    fit.save_checkpoint(tmp_path / "half.ckpt")
    assert torch.load(tmp_path / "half.ckpt", weights_only=True)["callbacks"]

    second = RegularizerCallback(PENALTY, mode="decoupled", schedule=schedule)
    resumed = Classifier(second)
    trainer(second).fit(resumed, loader(), ckpt_path=tmp_path / "half.ckpt")
    assert second.regularizer.steps == straight.regularizer.steps == 2 * ROWS // BATCH
    assert_same_weights(resumed.net, whole.net, atol=0)
    reference, _ = plain_loop("decoupled", schedule=schedule)
    assert_same_weights(whole.net, reference)


class RankRows(torch.utils.data.Sampler):
    """Rows ``rank, rank + 2, ...``: each of 2 ranks takes every other row, so one step of
    BATCH // 2 rows per rank sees the rows of one BATCH-row step in one process."""

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return iter(range(rank, ROWS, 2))

    def __len__(self):
        return ROWS // 2


def _ddp_worker(rank: int, init: str, out: str) -> None:
    """One of 2 processes launched here, not by Lightning (``spawn`` survives gloo's teardown
    abort): Lightning finds the process group initialized and the ranks in the environment."""
    torch.set_num_threads(1)
    os.environ.update(
        LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE="2", NODE_RANK="0", MASTER_ADDR="127.0.0.1"
    )
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    callback = RegularizerCallback(PENALTY, mode="proximal")
    model = Classifier(callback)
    x, y = data()
    rows = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=BATCH // 2, sampler=RankRows()
    )
    strategy = DDPStrategy(process_group_backend="gloo")
    fit = trainer(callback, devices=2, strategy=strategy, use_distributed_sampler=False)
    fit.fit(model, rows)
    weights = {n: p.detach().clone() for n, p in model.net.named_parameters()}
    torch.save(weights, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_the_full_batch(tmp_path):
    ranks = spawn(_ddp_worker, tmp_path, 2)
    reference, _ = plain_loop("proximal")
    # averaging the two ranks' mean gradients is the gradient of the mean over both halves
    for weights in ranks:
        for name, p in reference.named_parameters():
            torch.testing.assert_close(weights[name], p.detach(), atol=1e-10, rtol=0, msg=name)


# -- bad input: clear errors when the fit starts ----------------------------------------------
def test_unknown_mode_is_refused_at_construction():
    with pytest.raises(ValueError, match="mode must be one of"):
        RegularizerCallback(PENALTY, mode="weight_decay")


def test_rules_selecting_nothing_fail_at_fit_start():
    callback = RegularizerCallback(PENALTY, include="encoder.*")
    with pytest.raises(ValueError, match="encoder"):
        trainer(callback).fit(Classifier(callback), loader())


def test_two_callbacks_on_one_trainer():
    first, second = RegularizerCallback(PENALTY), RegularizerCallback("l2(1e-3)", mode="grad")
    fit = L.Trainer(callbacks=[first, second], max_epochs=1, logger=False)
    with pytest.raises(ValueError, match="2 RegularizerCallbacks on one Trainer"):
        fit.fit(Classifier(first), loader())


def test_one_callback_twice_on_one_trainer():
    callback = RegularizerCallback(PENALTY)
    with pytest.raises(RuntimeError, match="more than one stateful callback"):  # Lightning's
        L.Trainer(callbacks=[callback, callback], logger=False)


def test_loss_mode_without_the_penalty_in_the_loss():
    callback = RegularizerCallback(PENALTY, mode="loss")
    model = Classifier(None)  # its training_step never adds the regularizer
    with pytest.raises(RuntimeError, match="does not hold the penalty"):
        trainer(callback).fit(model, loader())


def test_decoupled_mode_on_lbfgs_explains_why():
    def lbfgs(params):
        return torch.optim.LBFGS(params, lr=0.1)

    callback = RegularizerCallback(PENALTY, mode="decoupled")
    with pytest.raises(ValueError, match=r"evaluates the\s+closure several times"):
        trainer(callback).fit(Classifier(callback, optimizer=lbfgs), loader())


def test_hooks_are_removed_after_fit():
    callback = RegularizerCallback(PENALTY, mode="decoupled")
    model = Classifier(callback)
    fit = trainer(callback)
    fit.fit(model, loader())
    opt = fit.optimizers[0]
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_checkpoint_keys_are_the_same_in_a_new_process():
    import json
    import subprocess
    import sys
    from pathlib import Path

    from . import lightning_rules

    done = subprocess.run(  # the rules defined in __main__ there, as in a user's script
        [sys.executable, str(Path(lightning_rules.__file__))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    here = lightning_rules.keys()
    assert json.loads(done.stdout.strip().splitlines()[-1]) == here
    # the callbacks' state keys are Lightning's format of those settings: distinct, no addresses
    states = [RegularizerCallback(**s).state_key for s in lightning_rules.settings()]
    assert states == [f"RegularizerCallback{key!r}" for key in here]
    assert len(set(states)) == len(states) and not any("0x" in k for k in states)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_centered_on_a_mapping_checkpoints_and_resumes(tmp_path):
    """A regularizer centered on reference tensors saves (as L2-SP on its saved w0) at the
    first checkpoint of a fit, and a fit resumed from it continues exactly."""
    g = torch.Generator().manual_seed(5)
    w0 = {"net.0.weight": torch.randn(16, 8, generator=g, dtype=torch.float64)}

    def callback():
        return RegularizerCallback({"net.0.weight": tp.L2(1e-1, center=w0)}, mode="decoupled")

    straight = callback()
    whole = Classifier(straight)
    trainer(straight).fit(whole, loader())

    first = callback()
    half = Classifier(first)
    fit = trainer(
        first, max_epochs=1, enable_checkpointing=True, default_root_dir=tmp_path
    )  # Lightning's own checkpoint at the end of the epoch
    fit.fit(half, loader())
    (saved,) = list(tmp_path.rglob("*.ckpt"))
    second = callback()
    resumed = Classifier(second)
    trainer(second).fit(resumed, loader(), ckpt_path=saved)
    assert_same_weights(resumed.net, whole.net, atol=0)
