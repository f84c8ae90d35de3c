"""The prefix every row of a training batch shares, run once per batch instead of once per row.

Chat rows start alike: the system prompt and the template's header before the question (SmolLM2's default system
prompt and `<|im_start|>user\n` are 20 tokens of the quickstart's ~80). `SFTTrainer` runs them for every row of every
batch. Here the shared prefix is run once (batch of one, through the LoRA model, with grad), its keys and values are
repeated for the batch, and the rest of each row runs on top of them. Autograd sums the rows' gradients through the
repeat, so loss and gradients are those of the unshared batch (up to float rounding; tests/test_prefix.py checks
both on a small model), and TRL's loss, entropy and token-accuracy metrics are computed as before.

Used only where it is exact and simple: one process (DDP, FSDP and DeepSpeed wrap the forward), no gradient
checkpointing (it disables the cache), padded rows with an attention mask (not packing or padding-free), a model whose
cache is plain per-layer keys and values (no sliding window, no recurrent state), and no supervised token inside the
prefix or right after it. With LoRA dropout the prefix's dropout mask is shared by the batch's rows.
"""

from __future__ import annotations

# Below this many shared tokens the extra forward call costs more than it saves.
MIN_SHARED_TOKENS = 8


def shared_prefix_length(input_ids, attention_mask, labels) -> int:
    """Tokens at the start of every row that are the same in all rows, real (not padding), unsupervised, and leave
    each row at least one token of its own whose label is also unsupervised (the first token after the prefix is
    predicted from the prefix's last position, which the rows' own forward does not see)."""
    import torch

    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0)
    agree = int(torch.cumprod(same.int(), 0).sum())
    supervised = (labels != -100).any(dim=0).nonzero()
    first_supervised = int(supervised[0]) if len(supervised) else labels.shape[1]
    n = min(agree, first_supervised - 1, int(attention_mask.sum(dim=1).min()) - 1)
    return n if n >= MIN_SHARED_TOKENS else 0


def plain_cache(cache) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def split_inputs(model, inputs: dict, n: int) -> dict | None:
    """`inputs` for the rows' own tokens on top of the shared prefix's cache (None: run the batch as it is)."""
    from kit.generation import cache_kwarg
    from kit.models import unwrapped

    backbone = unwrapped(model).base_model
    name = cache_kwarg(model)
    cache = backbone(input_ids=inputs["input_ids"][:1, :n], attention_mask=inputs["attention_mask"][:1, :n],
                     use_cache=True)[name]
    if not plain_cache(cache):
        return None
    cache.batch_repeat_interleave(inputs["input_ids"].shape[0])
    return {**{k: v for k, v in inputs.items() if k not in ("input_ids", "labels")},
            "input_ids": inputs["input_ids"][:, n:], "labels": inputs["labels"][:, n:], name: cache}


def trainer_class(share_prefix: bool = True):
    """`trl.SFTTrainer`, with the shared prefix run once per batch when `share_prefix` (module docstring); where the
    conditions do not hold, the batch runs exactly as in SFTTrainer."""
    from trl import SFTTrainer

    if not share_prefix:
        return SFTTrainer

    class SharedPrefixSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self._share_prefix() and set(inputs) <= {"input_ids", "attention_mask", "labels"}:
                n = shared_prefix_length(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
                split = split_inputs(self.accelerator.unwrap_model(model), inputs, n) if n else None
                if split is not None:
                    inputs = split
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def _share_prefix(self) -> bool:
            return (self.accelerator.num_processes == 1
                    and not self.args.gradient_checkpointing and not self.args.packing
                    and not self.args.padding_free and not self.is_deepspeed_enabled and not self.is_fsdp_enabled)

    return SharedPrefixSFTTrainer
