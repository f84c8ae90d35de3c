"""The tutorial's (003_...txt) evaluation loop, run as written on its own pinned stack (transformers 4.46), for
bench/against_tutorial.py. Not part of the kit: run it with the tutorial stack's Python.

    ~/.cache/tutorial-stack/venv/bin/python bench/tutorial_eval.py MODEL_DIR TEST_JSONL OUT_CSV ENCODER_DIR LAYER \
        [TOKENIZER_DIR]

For each single-turn test row, as the tutorial does: load the model and tokenizer, then per question
`apply_chat_template` + one `model.generate` (temperature 0.1 / top_p 0.1 / top_k 10 without do_sample: greedy;
max_new_tokens 512), the answer after any </think>, one BERTScore call (a scorer made once, as `evaluate`'s
"bertscore" caches it), and one CSV line appended with pandas. What CPU and offline force, and nothing else: float32
instead of float16 (half-precision matmuls have no fast kernel on this CPU), the encoder given as a local directory
and layer (no hub: `evaluate.load` and bert-base-chinese cannot be fetched), and only the newly generated tokens
decoded (the tutorial decodes the prompt too, which R1's </think> split hides and SmolLM2's template does not);
TOKENIZER_DIR when the model directory's tokenizer was saved by a newer transformers that 4.46 cannot read (the
kit's export: the same vocabulary and chat template, saved by the tutorial stack's setup); the encoder's fast
tokenizer (its slow one needs sentencepiece, which the pinned stack does not install).
Prints one JSON line: seconds for loading, generating, scoring, and the whole script from its first line; writes
OUT_CSV and OUT_CSV.jsonl (id, prediction) for the kit's value match.
"""
import time

T0 = time.time()
import json  # noqa: E402
import sys  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

model_dir, test_path, out_csv, encoder, layer = sys.argv[1:6]
tokenizer = AutoTokenizer.from_pretrained(sys.argv[6] if len(sys.argv) > 6 else model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
t_loaded = time.time()
rows = [json.loads(line) for line in open(test_path, encoding="utf-8")]
rows = [r for r in rows if r.get("turns", 1) == 1]
scorer = None
t_gen = t_score = 0.0
out = []
for item in rows:
    message = item["messages"][:-1]
    answer = item["messages"][-1]["content"]
    t = time.time()
    prompt = tokenizer.apply_chat_template(message, tokenize=True, add_generation_prompt=True, return_tensors="pt")
    output = model.generate(prompt, temperature=0.1, top_p=0.1, top_k=10, max_new_tokens=512,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    response = tokenizer.decode(output[0][prompt.shape[1]:], skip_special_tokens=True)
    prediction = response.split("</think>")[-1].strip()
    t_gen += time.time() - t
    t = time.time()
    if scorer is None:
        from bert_score import BERTScorer

        scorer = BERTScorer(model_type=encoder, num_layers=int(layer), lang="zh", use_fast_tokenizer=True)
        if not scorer._tokenizer.model_max_length or scorer._tokenizer.model_max_length > 100_000:
            scorer._tokenizer.model_max_length = 512
        if scorer._tokenizer.pad_token is None:
            scorer._tokenizer.pad_token = scorer._tokenizer.eos_token
    p, r, f = scorer.score([prediction], [answer])
    pd.DataFrame({"question": [message[-1]["content"]], "answer": [answer], "prediction": [prediction],
                  "precision": [float(p[0])], "recall": [float(r[0])], "f1": [float(f[0])]}).to_csv(
        out_csv, mode="a", header=False, index=False)
    t_score += time.time() - t
    out.append({"id": item.get("id"), "prediction": prediction})
with open(out_csv + ".jsonl", "w", encoding="utf-8") as f:
    f.write("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in out))
print(json.dumps({"rows": len(rows), "load_s": round(t_loaded - T0, 2), "generate_s": round(t_gen, 2),
                  "score_s": round(t_score, 2), "whole_s": round(time.time() - T0, 2)}))
