"""`RegularizerCallback` in a real Hugging Face `Trainer` on a tiny BERT built from a config
(nothing downloaded): l2 in decoupled mode is the Trainer's own AdamW weight decay, with and
without gradient accumulation; proximal L1 gives exact zeros on the Trainer's decay parameters
only; the penalty reaches log_history and the TensorBoard backend; bad input."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from torchpenalty.integrations.transformers import RegularizerCallback  # noqa: E402

STEPS = 8


class Tokens(torch.utils.data.Dataset):
    """Synthetic token sequences with binary labels."""

    def __init__(self, rows: int = 32, length: int = 12):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 50, (rows, length), generator=g)
        self.labels = torch.randint(0, 2, (rows,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).double()


def train(tmp_path, callbacks=(), *, weight_decay=0.0, **options):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=1e-2,
        weight_decay=weight_decay,
        use_cpu=True,
        save_strategy="no",
        logging_steps=2,
        disable_tqdm=True,
        seed=0,
        **{"report_to": "none", **options},
    )
    model = tiny_bert()
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=list(callbacks))
    trainer.train()
    return trainer


def assert_same_weights(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-10, rtol=0, msg=name)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_decoupled_l2_is_the_trainers_adamw_weight_decay(tmp_path, accumulation):
    own = train(tmp_path / "own", weight_decay=0.1, gradient_accumulation_steps=accumulation)
    callback = RegularizerCallback("l2(0.1)", mode="decoupled")
    ours = train(tmp_path / "ours", [callback], gradient_accumulation_steps=accumulation)
    assert own.optimizer.param_groups[0]["weight_decay"] == 0.1  # the Trainer's own decay ran
    assert_same_weights(ours.model, own.model)
    # the default selection is the Trainer's decay rule
    names = [n for n, _ in callback.regularizer.named_parameters()]
    assert names == ours.get_decay_parameter_names(ours.model)


def test_penalty_in_every_training_log(tmp_path):
    callback = RegularizerCallback("l1(1e-3) + l2(1e-2)", mode="grad")
    trainer = train(tmp_path, [callback])
    training_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(training_logs) == STEPS // 2
    assert all("penalty" in h for h in training_logs)
    assert not any("penalty" in h for h in trainer.state.log_history if "loss" not in h)
    # the last log comes after the last step: the penalty of the final weights
    final = callback.regularizer.report().total_value
    assert training_logs[-1]["penalty"] == pytest.approx(final, rel=1e-12)


def test_proximal_l1_exact_zeros_only_where_the_trainer_decays(tmp_path):
    callback = RegularizerCallback("l1(0.05)", mode="proximal")
    trainer = train(tmp_path, [callback])
    decayed = set(trainer.get_decay_parameter_names(trainer.model))
    zeros = {n: int((p == 0).sum()) for n, p in trainer.model.named_parameters()}
    assert sum(zeros[n] for n in decayed) > 0
    skipped = [n for n in zeros if n not in decayed]
    assert any("LayerNorm" in n for n in skipped) and any(n.endswith("bias") for n in skipped)
    assert all(zeros[n] == 0 for n in skipped)  # biases and LayerNorm untouched by the prox
    logs = [h for h in trainer.state.log_history if "loss" in h]
    report = callback.regularizer.report()
    assert logs[-1]["penalty_zero_fraction"] == report.zero_fraction > 0


def test_the_penalty_reaches_the_tensorboard_backend(tmp_path):
    accumulator = "tensorboard.backend.event_processing.event_accumulator"
    event_accumulator = pytest.importorskip(accumulator)
    callback = RegularizerCallback("l2(1e-2)", mode="decoupled")
    train(tmp_path, [callback], report_to="tensorboard")
    files = list(tmp_path.rglob("events.out.tfevents.*"))
    assert files
    events = event_accumulator.EventAccumulator(str(files[0].parent))
    events.Reload()
    assert "train/penalty" in events.Tags()["scalars"]
    assert len(events.Scalars("train/penalty")) == STEPS // 2


# -- bad input ---------------------------------------------------------------------------------
def test_loss_mode_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="out of a callback's reach"):
        RegularizerCallback("l2(0.1)", mode="loss")


def test_rules_selecting_nothing_fail_when_training_begins(tmp_path):
    with pytest.raises(ValueError, match="decoder"):
        train(tmp_path, [RegularizerCallback("l2(0.1)", include="decoder.*")])


def test_the_callback_twice_on_one_trainer(tmp_path):
    callback = RegularizerCallback("l2(0.1)")
    with pytest.raises(ValueError, match="2 RegularizerCallbacks on one Trainer"):
        train(tmp_path, [callback, callback])


def test_the_trainers_own_weight_decay_on_too_warns_once(tmp_path):
    callback = RegularizerCallback("l2(1e-2)", mode="decoupled")
    with pytest.warns(RuntimeWarning, match=r"weight_decay=0.1\), so they decay twice") as seen:
        train(tmp_path, [callback], weight_decay=0.1)
    assert len([w for w in seen if "decay twice" in str(w.message)]) == 1


def test_the_trainers_rule_decays_norm_layers_its_patterns_miss(tmp_path):
    """What the docs state: the Trainer's rule is nn.LayerNorm modules and name patterns, so a
    BatchNorm or RMSNorm whose name misses the patterns is decayed (and selected by default)."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.bn = torch.nn.BatchNorm1d(4)
            self.ln_f = torch.nn.RMSNorm(4)
            self.final_norm = torch.nn.RMSNorm(4)
            self.ln = torch.nn.LayerNorm(4)

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = Trainer(model=Net(), args=args)
    decayed = trainer.get_decay_parameter_names(trainer.model)
    assert decayed == ["fc.weight", "bn.weight", "ln_f.weight"]
