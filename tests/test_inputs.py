"""What a user types and the files a user gives: options and overrides in any order on every entry point, and every
file the kit reads in an encoding other than UTF-8 either read right or refused with a message naming it."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import pytest

from kit.config import ConfigError, KitError, load_config
from kit.files import read_text

ROOT = Path(__file__).resolve().parents[1]
ROLES = {"钟离": {"性别": "成年男性", "国籍": "璃月"}, "丽莎": {"性别": "成年女性", "国籍": "蒙德"}}

# Each entry point with the options it has, as the README and the docstrings write them.
ENTRY_POINTS = {"data_prep.build": [], "sft.train": [], "eval.merge": [], "eval.run": [],
                "eval.generate": ["--model", "base"], "eval.score": ["--predictions", "answers.csv"]}


@pytest.mark.parametrize("module", ENTRY_POINTS)
@pytest.mark.parametrize("where", ["before", "between", "after"])
def test_options_and_overrides_in_any_order(module, where, tmp_path):
    """A misspelt override is reported wherever it stands among the options: proof that it was parsed."""
    options = ENTRY_POINTS[module]
    overrides = [f"output_dir={tmp_path / 'o'}", "train.learnig_rate=1e-3"]
    argv = {"before": [*overrides, *options], "after": [*options, *overrides],
            "between": [overrides[0], *options, overrides[1]]}[where]
    main = importlib.import_module(module).main
    with pytest.raises(ConfigError, match=r"train\.learnig_rate: unknown key; did you mean 'learning_rate'\?"):
        main([str(ROOT / "configs" / "quickstart.yaml"), *argv])
    assert not (tmp_path / "o").exists()


def test_score_predictions_then_override_as_the_issue_wrote_it(tiny_bert, tmp_path):
    from eval.score import main

    answers = tmp_path / "answers.csv"
    with answers.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer", "prediction", "expected"])
        w.writerow(["钟离的国籍是?", "钟离来自璃月", "钟离来自璃月", "璃月"])
        w.writerow(["丽莎的国籍是?", "丽莎来自蒙德", "丽莎来自璃月", "蒙德"])
    config = ROOT / "configs" / "quickstart.yaml"
    enc = [f"eval.bertscore_model={tiny_bert}", "eval.bertscore_layer=2"]
    assert main([str(config), "--predictions", str(answers), f"output_dir={tmp_path / 'x'}", *enc]) == 0
    assert main([str(config), f"output_dir={tmp_path / 'y'}", *enc, "--predictions", str(answers)]) == 0
    for run in ("x", "y"):
        summary = json.loads((tmp_path / run / "report" / "summary.json").read_text(encoding="utf-8"))
        assert summary["models"]["answers"]["overall"]["value_match_rate"] == 0.5


# ---------------------------------------------------------------------------------------------------------------------
# Encodings


def gbk(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("gbk"))
    return path


GBK_MESSAGE = (r"is not UTF-8 \(byte 0x[0-9a-f]{2} at line \d+, column \d+\); it looks like GBK / GB18030 .*"
               r"iconv -f GB18030 -t UTF-8")


def test_gbk_attribute_file_is_named_and_nothing_is_written(tmp_path):
    from data_prep.build import main

    src = gbk(tmp_path / "roles.json", json.dumps(ROLES, ensure_ascii=False, indent=1))
    config = ROOT / "configs" / "quickstart.yaml"
    with pytest.raises(KitError, match=r"roles\.json: the data\.source " + GBK_MESSAGE):
        main([str(config), f"data.source={src}", f"output_dir={tmp_path / 'o'}"])
    assert not (tmp_path / "o").exists()


def test_gbk_config_file(tmp_path):
    config = gbk(tmp_path / "c.yaml", "model: {name_or_path: m}\n# 中文注释: 钟离\noutput_dir: runs/x\n")
    with pytest.raises(KitError, match=r"c\.yaml: the config file is not UTF-8 \(byte 0x[0-9a-f]{2} at line 2, "
                                       r"column 3\); it looks like GBK"):
        load_config(config)


def test_gbk_question_bank(tmp_path):
    from data_prep.banks import load_banks

    bank = gbk(tmp_path / "bank.yaml", "attributes:\n  武器:\n    questions: ['{entity}用什么武器?']\n"
                                       "    answers: ['{entity}用{value}']\n")
    with pytest.raises(KitError, match=r"bank\.yaml: the question bank is not UTF-8 .* GBK"):
        load_banks("zh", [str(bank)], "extend")


def test_gbk_predictions_file(tiny_bert, tmp_path):
    from eval.score import main

    answers = gbk(tmp_path / "answers.csv", "question,answer,prediction\n钟离的国籍是?,钟离来自璃月,钟离来自璃月\n")
    with pytest.raises(KitError, match=r"answers\.csv: the predictions file " + GBK_MESSAGE):
        main([str(ROOT / "configs" / "quickstart.yaml"), "--predictions", str(answers),
              f"output_dir={tmp_path / 'o'}", f"eval.bertscore_model={tiny_bert}", "eval.bertscore_layer=2"])


def test_latin1_is_named_too(tmp_path):
    path = tmp_path / "people.json"
    path.write_bytes('{"José": {"nation": "España"}}'.encode("latin-1"))
    with pytest.raises(KitError, match=r"people\.json: the file is not UTF-8 \(byte 0xe9 at line 1, column 6\); it "
                                       r"looks like an 8-bit encoding such as Latin-1"):
        read_text(path)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_bom_files_are_read_right(encoding, tmp_path):
    """UTF-8 with a BOM (Excel, Notepad) and UTF-16 with a BOM (Windows 'Unicode') say what they are: read them,
    and build the same bytes as from plain UTF-8."""
    from data_prep.build import build
    from kit.config import build_config

    text = json.dumps(ROLES, ensure_ascii=False)
    plain = tmp_path / "plain.json"
    plain.write_text(text, encoding="utf-8")
    other = tmp_path / "other.json"
    other.write_bytes(text.encode(encoding))
    assert other.read_bytes()[:2] in (b"\xef\xbb", b"\xff\xfe")

    def built(src: Path, out: str) -> bytes:
        cfg = build_config({"model": {"name_or_path": "m"}, "data": {"source": str(src)},
                            "output_dir": str(tmp_path / out)})
        return (build(cfg) / "train.jsonl").read_bytes()

    assert built(other, "b") == built(plain, "a")
