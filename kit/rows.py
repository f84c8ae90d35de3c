"""The one row shape every stage reads and writes: a chat conversation plus the fact it is about.

data_prep writes rows to train.jsonl / validation.jsonl / test.jsonl / beyond.jsonl; sft trains on their `messages`
(loss on the assistant turns); eval answers their last question and scores the answer against `value` / `expected`.
The kit's own rows (replay answers, everyday probes, questions about invented people) take the same shape, so every
reader handles one type. Rows are written with sorted keys, so the order of the fields below never changes a file.
"""

from __future__ import annotations

import hashlib
from typing import TypedDict


class Message(TypedDict):
    role: str  # "system", "user" or "assistant"
    content: str


class Row(TypedDict, total=False):
    id: str  # 12 hex digits of a hash of what the row asks: stable across rebuilds
    messages: list[Message]  # [system], user, assistant (, user, assistant ...): the last one is the answer
    entity: str  # who or what the row is about ("" for rows about no entity of the data)
    attribute: str  # which attribute it asks ("+"-joined for a multi-turn row)
    value: str  # the attribute's value as the data gives it
    expected: str  # what a right answer must contain (value match); the value unless data says otherwise
    template: str  # which phrasing made it: a bank's template id "<bank>/<hash>", or one of the kinds below
    turns: int  # assistant turns
    split: str  # eval rows only: the split or measure it is asked for ("test", PROBE, UNKNOWN, kit.beyond.BEYOND_SPLITS)
    check: str  # beyond rows only: JSON of what the answer must say (kit.beyond.judge)
    key: str  # replay rows only: the cache key of the answers (sft.replay)


# Kinds of row that are not made from a bank's phrasing: their `template`.
CONVERSATION = "conversation"  # a row of a conversation dataset, as given
MULTI = "multi"  # several facts about one entity asked in one conversation (data.multi_turn)
UNKNOWN = "unknown"  # a question about an invented person, answered "I don't know who X is" (data.unknown_entities)
REPLAY = "replay"  # the base model's own answer to a general prompt (data.replay)
NOT_FACTS = (UNKNOWN, REPLAY)  # train rows that teach no fact

# Template-id prefixes (the bank a row's phrasing came from) of rows that do not ask one fact forward.
REVERSE_BANK = "reverse"  # from a value back to its entity (data.reverse)
CLAIM_BANK = "claim"  # yes/no claims (data.verify, kit/beyond.py)
COMPOSE_BANK = "compose"  # one hop over the table (data.compose, kit/beyond.py)

# The `split` of an eval row asking an everyday question: leak and drift (kit.specificity).
PROBE = "probe"


def row_id(*parts: str) -> str:
    """12 hex digits of SHA-1 over the parts joined by \\x1f: the id of a row asking what `parts` name."""
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:12]


def qa_row(id: str, system: list[Message], question: str, answer: str, template: str, *, entity: str = "",
           attribute: str = "", value: str = "", expected: str | None = None, split: str | None = None) -> Row:
    """A one-question row: the system turn (kit.chat.system_messages, [] for none), the question and its answer ("" for
    a question eval will answer). expected: the value when not given."""
    row: Row = {"id": id, "messages": [*system, {"role": "user", "content": question},
                                       {"role": "assistant", "content": answer}],
                "entity": entity, "attribute": attribute, "value": value,
                "expected": value if expected is None else expected, "template": template, "turns": 1}
    if split is not None:
        row["split"] = split
    return row


def question_of(row: Row) -> str:
    """The question a one-question row asks (the user turn before the answer)."""
    return row["messages"][-2]["content"]


def is_beyond(template: str | None) -> bool:
    """A claim or one-hop train row (data.verify, data.compose): not one fact asked on its own."""
    return str(template or "").startswith((CLAIM_BANK + "/", COMPOSE_BANK + "/"))


def is_reverse(template: str | None) -> bool:
    """A row asking from a value back to its entity (data.reverse): its template id is "reverse/<hash>"."""
    return str(template or "").startswith(REVERSE_BANK + "/")


def is_fact(row: Row) -> bool:
    """A one-question row teaching one fact forward about an entity of the data: not a question about nobody, a replay
    answer, a claim or a one-hop row (a reverse row counts: it names the entity and the value)."""
    return bool(row.get("turns", 1) == 1 and row.get("template") not in NOT_FACTS and row.get("entity")
                and not is_beyond(row.get("template")))
