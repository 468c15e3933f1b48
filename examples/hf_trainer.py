"""The Hugging Face Trainer with a torchpenalty callback, on a tiny BERT built from a config
(nothing downloaded) and synthetic tokens.

The default selection is the Trainer's own decay rule (no biases, no LayerNorm): ``l2(wd)`` in
decoupled mode with ``weight_decay=0`` is the Trainer's AdamW decay; proximal L1 gives exact
zeros on the same weights. The penalty goes into the Trainer's logs and every report_to backend.

    python examples/hf_trainer.py                                  # l1(1e-3), proximal
    python examples/hf_trainer.py --penalty "l2(0.01)" --mode decoupled --steps 100
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from torchpenalty.integrations.transformers import RegularizerCallback


class SyntheticTokens(torch.utils.data.Dataset):
    """Token sequences labelled by whether token 1 occurs more often than token 2."""

    def __init__(self, rows: int = 256, length: int = 16, vocab: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, vocab, (rows, length), generator=g)
        self.labels = ((self.ids == 1).sum(1) > (self.ids == 2).sum(1)).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert(vocab: int = 64) -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--penalty", default="l1(1e-3)")
    parser.add_argument("--mode", default="proximal")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = tiny_bert()
    penalty = RegularizerCallback(args.penalty, mode=args.mode)
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=16,
            learning_rate=5e-3,
            weight_decay=0.0,  # the callback regularizes
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=args.seed,
        )
        trainer = Trainer(
            model=model, args=training, train_dataset=SyntheticTokens(), callbacks=[penalty]
        )
        trainer.train()
    logs = [h for h in trainer.state.log_history if "penalty" in h]
    report = penalty.regularizer.report()
    regularized = {row.name for row in report}
    untouched = [n for n, _ in model.named_parameters() if n not in regularized]
    result = {"logs": logs, "zero_fraction": report.zero_fraction, "untouched": untouched}
    for entry in logs:
        print(f"step {entry['step']:4d}  loss {entry['loss']:.4f}  penalty {entry['penalty']:.4g}")
    print(
        f"{args.penalty} ({args.mode}) on {len(report)} weight tensors: exact zeros "
        f"{report.zero_fraction:.1%}; not regularized (biases, LayerNorm): {len(untouched)} tensors"
    )
    return result


if __name__ == "__main__":
    main()
