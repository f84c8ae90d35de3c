"""The shared prefix of a batch, run once (sft/prefix.py): where it applies, and that loss and gradients are those of
the batch run row by row."""

import pytest
import torch

from sft.prefix import MIN_SHARED_TOKENS, shared_prefix_length
from tests.conftest import tiny_run_config

P = MIN_SHARED_TOKENS


def batch(rows: list[list[int]], supervised_from: list[int]):
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = torch.tensor([[-100 if k < s or k >= len(r) else r[k] for k in range(width)]
                           for r, s in zip(rows, supervised_from)])
    return ids, mask, labels


def test_prefix_is_what_all_rows_share_before_anything_supervised():
    head = list(range(100, 100 + P + 2))  # P + 2 shared tokens
    ids, mask, labels = batch([head + [1, 2, 3, 4], head + [5, 6, 7]], [len(head) + 2, len(head) + 1])
    assert shared_prefix_length(ids, mask, labels) == P + 2
    # the first token after the prefix supervised in one row: the prefix stops one token short of it
    ids, mask, labels = batch([head + [1, 2, 3, 4], head + [5, 6, 7]], [len(head) + 2, len(head)])
    assert shared_prefix_length(ids, mask, labels) == P + 1
    # a row no longer than the prefix keeps one token of its own
    ids, mask, labels = batch([head + [1, 2, 3, 4], head[:P + 1]], [len(head) + 2, P + 5])
    assert shared_prefix_length(ids, mask, labels) == P


def test_no_prefix_when_short_different_or_single_row():
    head = list(range(100, 100 + P - 1))  # one token too few to pay
    ids, mask, labels = batch([head + [1, 2], head + [3, 4]], [len(head) + 1] * 2)
    assert shared_prefix_length(ids, mask, labels) == 0
    ids, mask, labels = batch([[7] + list(range(20)), [8] + list(range(20))], [15, 15])
    assert shared_prefix_length(ids, mask, labels) == 0
    ids, mask, labels = batch([list(range(30))], [20])
    assert shared_prefix_length(ids, mask, labels) == 0


def _loss_and_grads(trainer, model, inputs, shared: bool):
    from trl import SFTTrainer

    model.zero_grad()
    fn = trainer.compute_loss if shared else SFTTrainer.compute_loss.__get__(trainer)
    loss = fn(model, {k: v.clone() for k, v in inputs.items()})
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def test_shared_prefix_gives_the_batch_loss_and_gradients(tiny_model, tmp_path, monkeypatch):
    import sft.prefix
    from sft.train import build_trainer

    cfg = tiny_run_config(tiny_model, tmp_path)
    trainer = build_trainer(cfg).trainer
    assert type(trainer).__name__ == "SharedPrefixSFTTrainer"
    used = []
    split = sft.prefix.split_inputs
    monkeypatch.setattr(sft.prefix, "split_inputs", lambda m, i, n: used.append(n) or split(m, i, n))
    inputs = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA starts with B = 0, where A gets no gradient: start from a trained-like state
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    shared_loss, shared = _loss_and_grads(trainer, model, inputs, shared=True)
    assert len(used) == 1 and used[0] >= MIN_SHARED_TOKENS  # the system prompt and the user header at least
    plain_loss, plain = _loss_and_grads(trainer, model, inputs, shared=False)
    assert len(used) == 1
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert shared.keys() == plain.keys() and len(shared) > 0
    for name in plain:
        assert plain[name].abs().max() > 0, name
        torch.testing.assert_close(shared[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_share_prefix_false_is_plain_sfttrainer(tiny_model, tmp_path):
    from dataclasses import replace

    from trl import SFTTrainer

    from sft.train import build_trainer

    cfg = tiny_run_config(tiny_model, tmp_path)
    cfg = replace(cfg, train=replace(cfg.train, share_prefix=False))
    assert type(build_trainer(cfg).trainer) is SFTTrainer
