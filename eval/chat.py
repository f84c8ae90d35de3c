"""Chat with the fine-tuned model in the terminal: answers stream as they are written, the conversation is kept.

    python -m eval.chat configs/quickstart.yaml
    python -m eval.chat configs/quickstart.yaml --compare               # the base model answers under each turn
    python -m eval.chat configs/quickstart.yaml eval.use_merged=false   # base + adapter even with a merged export

/reset forgets the conversation, /quit (or Ctrl-D) leaves; Ctrl-C stops the answer being written, not the chat.
The prompt (chat template, data.system_prompt), greedy decoding, end tokens, eval.max_new_tokens and the think
handling (model.thinking) are eval.generate's, so an answer here is the answer in the report.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kit.chat import THINK_CLOSE, final_answer, generation_prompt, opens_think, system_messages
from kit.config import Config, parse_args, run_main

HELP = "/reset forgets the conversation, /quit leaves; Ctrl-C stops an answer"


class Chat:
    """One model's side of a conversation: its history and a streaming, greedy `reply`."""

    def __init__(self, cfg: Config, which: str = "finetuned", loaded=None):
        from eval.models import load_for_generation, model_source
        from kit.models import pick_device, set_threads

        self.cfg, self.which = cfg, which
        if loaded is None:
            path, adapter, answered_by = model_source(cfg, which)  # a missing model fails here, naming the command
            print(f"{which}: {answered_by}", flush=True)
            device = pick_device(cfg.train.device)
            set_threads(cfg.train.threads, device)
            loaded = load_for_generation(cfg, path, adapter, device)
        self.model, self.tok = loaded
        self.system = system_messages(cfg.data.system_prompt)
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def reply(self, text: str, on_text: Callable[[str], None] | None = None,
              stop: threading.Event | None = None) -> str:
        """The answer to `text` given the conversation so far (kept in the history). `on_text` gets the visible
        text piece by piece as it is generated; setting `stop` ends the answer where it is."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        from kit.generation import stop_token_ids

        messages = self.system + self.history + [{"role": "user", "content": text}]
        prompt = generation_prompt(self.tok, messages)
        ids = self.tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(next(self.model.parameters()).device)
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        stop = stop or threading.Event()

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return stop.is_set()

        stops = stop_token_ids(self.tok, self.model)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.cfg.eval.max_new_tokens,
                      do_sample=False, eos_token_id=stops, pad_token_id=self.tok.pad_token_id or stops[0],
                      streamer=streamer, stopping_criteria=StoppingCriteriaList([Stopped()]))
        failed: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                failed.append(e)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        shown = _Visible(self.cfg.model.thinking, opens_think(prompt), on_text)
        try:
            for piece in streamer:
                shown.add(piece)
        except KeyboardInterrupt:  # Ctrl-C: end this answer, keep the chat
            stop.set()
            for _ in streamer:
                pass
        worker.join()
        if failed:
            raise failed[0]
        answer = final_answer(shown.raw, self.cfg.model.thinking, opens_think(prompt))
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return answer


class _Visible:
    """What the user sees of a streamed answer: with model.thinking=strip, nothing before the end of the think block
    (the report strips it too)."""

    def __init__(self, thinking: str, opened: bool, on_text: Callable[[str], None] | None):
        self.raw, self.hide, self.on_text, self.sent = "", thinking == "strip", on_text, 0

    def add(self, piece: str) -> None:
        self.raw += piece
        if not self.on_text:
            return
        visible = self.raw.lstrip()  # as eval.generate's answers, which are stripped
        if self.hide:
            if THINK_CLOSE not in self.raw:
                return
            visible = self.raw.rsplit(THINK_CLOSE, 1)[-1].lstrip()
        if len(visible) > self.sent:
            self.on_text(visible[self.sent:])
            self.sent = len(visible)


def chat_loop(chats: dict[str, Chat], read: Callable[[str], str], write: Callable[[str], None]) -> None:
    """The terminal conversation: `read(prompt)` gives each line typed (EOFError ends), `write` prints. Each model
    in `chats` answers every turn, the first one first."""
    write(f"chatting with {', '.join(chats)} ({HELP})\n")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:
            write("\n(Ctrl-C stops an answer; /quit or Ctrl-D leaves)\n")
            continue
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            for chat in chats.values():
                chat.reset()
            write("(conversation forgotten)\n")
            continue
        if line.startswith("/"):
            write(f"unknown command {line}; {HELP}\n")
            continue
        for label, chat in chats.items():
            write(f"{label}> ")
            chat.reply(line, on_text=write)
            write("\n")


def main(argv: list[str] | None = None) -> int:
    import sys

    args, cfg = parse_args(argv, __doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--compare", action="store_true", help="the base model answers each turn too, under the fine-tuned one"))
    chats = {"finetuned": Chat(cfg, "finetuned")}
    if args.compare:
        chats["base"] = Chat(cfg, "base")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat_loop(chats, input, write)
    return 0


if __name__ == "__main__":
    run_main(main)
