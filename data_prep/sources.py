"""What `data.source` can be, read and checked before anything is written.

Attribute tables ({entity: {attribute: value}}), by file type:
- `.json`: {"钟离": {"性别": "成年男性", ...}, ...}
- `.csv` / `.tsv` / `.xlsx` (the first visible sheet, cells as Excel shows them) / `.jsonl` (one object per
  entity), either
  wide: one row per entity, the entity in `data.entity_column` (default: the first column), one column per attribute;
  or long: exactly the columns entity, attribute, value (or 实体, 属性, 值), one row per fact.
  An empty cell means the entity has no such attribute.
Conversation datasets (rows with a `messages` list of {role, content}, as TRL and OpenAI use them):
- `.jsonl`, `.json` (a list of rows), `.parquet`, a directory written by `datasets.save_to_disk`, or `hf:owner/name`
  (a hub dataset). Its own train/test splits are used when it has them.

Names are compared as `text_key` reads them: two entities (or two attributes of one entity, or two columns) that
differ only in spaces or in full-width / half-width forms ("钟离" and "钟离 ", "ＡＢＣ" and "ABC") are one name written
two ways: an error naming both. The names are kept as written, trimmed.

Text files are read as UTF-8 (with or without BOM) or UTF-16 with a BOM (kit.files.read_text); anything else, e.g.
GBK from Chinese Excel, is refused with the line, the encoding it looks like and how to save it as UTF-8.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from kit.errors import DataError
from kit.files import read_text

Attributes = dict[str, dict[str, str]]
TABLES = (".csv", ".tsv", ".xlsx", ".jsonl")
LONG_HEADERS = (("entity", "attribute", "value"), ("实体", "属性", "值"))
ROLES = ("system", "user", "assistant")
HUB_PREFIX = "hf:"
# What a spreadsheet shows where a formula failed; a CSV exported from it holds the same text.
SPREADSHEET_ERRORS = ("#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A", "#GETTING_DATA", "#SPILL!",
                      "#CALC!", "#FIELD!", "#BLOCKED!", "#CONNECT!", "#BUSY!", "#UNKNOWN!")


@dataclass
class Conversations:
    """Chat rows from a conversation dataset: {split name: rows}; split names are the dataset's own ("train",
    "test", ...) or "all" when it has none."""

    splits: dict[str, list[dict]]
    where: str


def text_key(text: str) -> str:
    """What makes two names, or two conversations, the same: Unicode NFKC (full-width and half-width forms alike: "？"
    is "?", "Ａ" is "A") without any whitespace ("甘雨来自哪里 ?" is "甘雨来自哪里?": Chinese puts no spaces between
    words, so only spaces can tell such texts apart, never meaning). Case and punctuation still tell them apart
    ("1.5" is not "15")."""
    return "".join(unicodedata.normalize("NFKC", text).split())


def same_name(a: str, b: str, what: str) -> str:
    """'"钟离" and "钟离 " are the same entity after trimming spaces': two spellings of one `text_key`."""
    if a.strip() == b.strip():
        how = "trimming spaces"
    elif "".join(a.split()) == "".join(b.split()):
        how = "removing spaces"
    else:
        how = "Unicode NFKC normalisation (full-width and half-width forms alike), ignoring spaces"
    return f"\"{a}\" and \"{b}\" are the same {what} after {how}"


def is_hub(source: str) -> bool:
    return str(source).startswith(HUB_PREFIX)


def _raise(where: str, errors: list[str]) -> None:
    if errors:
        raise DataError.of(where, errors)


def load_source(source: str, language: str = "zh", entity_column: str | None = None) -> Attributes | Conversations:
    """The facts or the conversations in `source`; every problem in it is reported at once, before any output."""
    if is_hub(source):
        return _load_hub(source[len(HUB_PREFIX):])
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_saved(path)
    if not path.is_file():
        raise DataError(f"{path}: data.source not found; give an attribute file (.json, .csv, .tsv, .xlsx, "
                        f".jsonl), a conversation dataset (.jsonl, .json, .parquet, a save_to_disk directory) or "
                        f"hf:owner/name")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
        return Conversations({"all": _check_conversations(rows, str(path))}, str(path))
    if suffix == ".xlsx":
        return attributes_from_table(*_read_xlsx(path), str(path), language, entity_column)
    if suffix in (".csv", ".tsv"):
        return attributes_from_table(*_read_delimited(path, "\t" if suffix == ".tsv" else ","), str(path), language,
                                     entity_column)
    if suffix == ".jsonl":
        rows = _read_jsonl(path)
        if rows and all(isinstance(r, dict) and "messages" in r for _, r in rows):
            return Conversations({"all": _check_conversations([r for _, r in rows], str(path),
                                                              lines=[n for n, _ in rows])}, str(path))
        return attributes_from_table(*_jsonl_table(rows, path, language), str(path), language, entity_column)
    if suffix == ".json":
        raw = _read_json(path)
        if isinstance(raw, list) and raw and all(isinstance(r, dict) and "messages" in r for r in raw):
            return Conversations({"all": _check_conversations(raw, str(path))}, str(path))
        return attributes_from_json(raw, path, language)
    raise DataError(f"{path}: unknown data.source type '{suffix or '(no extension)'}'; use .json, .jsonl, .csv, "
                    f".tsv, .xlsx or .parquet, a save_to_disk directory or hf:owner/name")


# ---------------------------------------------------------------------------------------------------------------------
# Attribute JSON


def _no_duplicates(where: str | Path, entities: bool = True):
    """json's object_pairs_hook refusing a key given twice in one object (`entities`: the top level is entities)."""
    def hook(pairs: list[tuple[str, object]]) -> dict:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                # json calls the hook innermost-first: an object whose values are objects is the top level
                what = "entity" if entities and any(isinstance(v, dict) for _, v in pairs) else "key"
                raise DataError(f"{where}: duplicate {what} \"{key}\" (json would silently keep the last one); "
                                f"merge the two entries into one")
            seen.add(key)
        return dict(pairs)

    return hook


def _read_json(path: Path) -> object:
    text = read_text(path, "data.source")
    if not text.strip():
        raise DataError(f"{path}: file is empty; expected JSON like {{\"钟离\": {{\"性别\": \"成年男性\"}}}}")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


class ListValue(str):
    """A value given as a list (["Yoruba", "Portuguese"]): the text is the items joined as before ("Yoruba,
    Portuguese"; "约鲁巴语、葡萄牙语"), and `items` keeps them, so answers can name every item ("Yoruba and
    Portuguese") and value match can ask for each."""

    items: tuple[str, ...]

    def __new__(cls, items: list[str], language: str) -> ListValue:
        items = [v.strip() for v in items]
        self = super().__new__(cls, ("、" if language == "zh" else ", ").join(items))
        self.items = tuple(items)
        return self

    def strip(self, chars: str | None = None) -> str:  # table cells are stripped: keep the items
        return self if chars is None else str.strip(self, chars)


def _value_text(value: object, language: str) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return ListValue(value, language)
    return None


def attributes_from_json(raw: object, path: Path, language: str) -> Attributes:
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: the top level must be a non-empty object {{entity: {{attribute: value}}}}, or a "
                        f"list of rows with \"messages\" (a conversation dataset)")
    errors: list[str] = []
    out: Attributes = {}
    entities: dict[str, str] = {}  # text_key -> the name as written
    for entity, attrs in raw.items():
        where = f"entity \"{entity}\""
        if not entity.strip():
            errors.append("an entity name is empty or whitespace")
            continue
        if (first := entities.setdefault(text_key(entity), entity)) != entity:
            errors.append(f"{same_name(first, entity, 'entity')}; merge the two into one")
            continue
        if not isinstance(attrs, dict):
            errors.append(f"{where}: must be an object of attribute: value, got {type(attrs).__name__}")
            continue
        if not attrs:
            errors.append(f"{where}: has no attributes")
            continue
        out[entity.strip()] = {}
        names: dict[str, str] = {}
        for attr, value in attrs.items():
            at = f"{where}: attribute \"{attr}\""
            if not attr.strip():
                errors.append(f"{where}: an attribute name is empty")
            elif (first := names.setdefault(text_key(attr), attr)) != attr:
                errors.append(f"{where}: {same_name(first, attr, 'attribute')}; keep one")
            elif isinstance(value, dict):
                errors.append(f"{at}: nested objects are not supported; flatten it to \"{attr}\": \"value\"")
            elif (v := _value_text(value, language)) is None:
                hint = ("; write yes/no or 是/否 as text" if isinstance(value, bool) else
                        "; an item of the list is empty" if isinstance(value, list) and value else "")
                errors.append(f"{at}: value must be a string, a number or a non-empty list of strings, "
                              f"got {json.dumps(value, ensure_ascii=False)}{hint}")
            elif not v:
                errors.append(f"{at}: value is empty; leave the attribute out for this entity (an empty table cell "
                              f"means the same)")
            else:
                out[entity.strip()][attr.strip()] = v
    _raise(str(path), errors)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Tables: a header and numbered rows of cells, from any file type, then one check for all


def _number(x: int | float) -> str:
    """Numbers as a person wrote them: 1.0 -> "1", 2.50 -> "2.5"."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return repr(x) if isinstance(x, float) else str(x)


def _read_delimited(path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    text = read_text(path, "data.source")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            rows.append((reader.line_num, cells))
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: {e}; check the quotes on that line") from None
    return _split_header(rows, path)


def _read_jsonl(path: Path) -> list[tuple[int, object]]:
    rows = []
    for n, line in enumerate(read_text(path, "data.source").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line, object_pairs_hook=_no_duplicates(f"{path}: line {n}", entities=False))))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n}: invalid JSON at column {e.colno}: {e.msg}") from None
    if not rows:
        raise DataError(f"{path}: file is empty; expected one JSON object per line")
    return rows


def _jsonl_table(rows: list[tuple[int, object]], path: Path,
                 language: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """JSONL objects as a table: the columns are the keys in the order they first appear."""
    header: list[str] = []
    for n, r in rows:
        if not isinstance(r, dict):
            raise DataError(f"{path}: line {n}: expected a JSON object per line, got {type(r).__name__}")
        for k in r:
            if k not in header:
                header.append(k)
    table = []
    for n, r in rows:
        cells = []
        for k in header:
            v = r.get(k)  # type: ignore[union-attr]
            if v is None:  # absent or null: no such attribute, as an empty cell
                text = ""
            elif isinstance(v, str):  # as written: trimmed with the other cells, where a message can show both
                text = v
            elif (text := _value_text(v, language)) is None:  # true/false too, as in the JSON form
                raise DataError(f"{path}: line {n}: \"{k}\" must be a string, a number or a non-empty list of "
                                f"strings, got {json.dumps(v, ensure_ascii=False)[:60]}")
            cells.append(text)
        table.append((n, cells))
    return header, table


def _split_header(rows: list[tuple[int, list[str]]], path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The first row with any text is the header; rows without any are dropped. Cells stay as written: they are
    trimmed where they are read (attributes_from_table), so that a message can show a name as written."""
    rows = [(n, cells) for n, cells in rows if any(c.strip() for c in cells)]
    if not rows:
        raise DataError(f"{path}: no rows; expected a header row (entity, then one column per attribute) and one "
                        f"row per entity")
    (_, header), body = rows[0], rows[1:]
    return header, body


def _column(i: int) -> str:
    """Spreadsheet column letter of index i (0 -> A, 26 -> AA)."""
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


def attributes_from_table(header: list[str], rows: list[tuple[int, list[str]]], where: str, language: str = "zh",
                          entity_column: str | None = None) -> Attributes:
    """A wide or long table as {entity: {attribute: value}}, checked; row numbers are the file's. Cells are trimmed;
    names that are one name written two ways (text_key) are errors naming both."""
    width = max([len(header), *(len(c) for _, c in rows)])
    written = header + [""] * (width - len(header))  # the header as written, for messages
    header = [h.strip() for h in written]
    rows = [(n, cells + [""] * (width - len(cells))) for n, cells in rows]
    errors: list[str] = []
    used = [i for i in range(width) if header[i] or any(c[i].strip() for _, c in rows)]
    seen: dict[str, int] = {}  # column name -> index
    keys: dict[str, int] = {}  # text_key of a column name -> index
    for i in used:
        name = header[i]
        if not name:
            errors.append(f"column {_column(i)} has values but no name in the header row; name it or delete it")
        elif (j := keys.setdefault(text_key(name), i)) != i:
            if written[j] == written[i]:
                errors.append(f"columns {_column(j)} and {_column(i)} are both named \"{name}\"; rename or merge one")
            else:
                errors.append(f"columns {_column(j)} and {_column(i)}: {same_name(written[j], written[i], 'column')}; "
                              f"rename or merge one")
        else:
            seen[name] = i
    _raise(where, errors)
    if not rows:
        raise DataError(f"{where}: a header row and no data rows; add one row per entity")
    names = tuple(h.lower() for h in header if h)
    long = entity_column is None and names in LONG_HEADERS
    if long:
        return _long_table(header, rows, where)
    if entity_column is not None and entity_column not in seen:
        raise DataError(f"{where}: no column \"{entity_column}\" (data.entity_column) in the header: "
                        f"{', '.join(h for h in header if h)}; set data.entity_column to the column that names the "
                        f"entity")
    key = seen[entity_column] if entity_column is not None else used[0]
    attributes = [(i, header[i]) for i in used if i != key]
    if not attributes:
        raise DataError(f"{where}: only the entity column \"{header[key]}\"; add one column per attribute, or use "
                        f"the long form with the columns entity, attribute, value")
    out: Attributes = {}
    first_row: dict[str, tuple[int, str]] = {}  # text_key of an entity -> (its first row, the name as written there)
    for n, raw in rows:
        cells = [c.strip() for c in raw]
        if failed := _spreadsheet_errors(n, cells, used):
            errors += failed
            continue
        entity = cells[key]
        if not entity:
            errors.append(f"row {n}: the entity column \"{header[key]}\" is empty")
            continue
        r, spelt = first_row.setdefault(text_key(entity), (n, raw[key]))
        if r != n:
            same = f"entity \"{entity}\" again" if spelt == raw[key] else same_name(spelt, raw[key], "entity")
            errors.append(f"row {n}: {same} (first in row {r}); merge the two rows into one")
            continue
        facts = {name: cells[i] for i, name in attributes if cells[i]}
        if not facts:
            errors.append(f"row {n}: entity \"{entity}\" has no attributes (every other cell is empty)")
            continue
        out[entity] = facts
    _raise(where, errors)
    return out


def _spreadsheet_errors(n: int, cells: list[str], columns: list[int]) -> list[str]:
    """Row n's cells that hold a spreadsheet's error text (#N/A...): a formula that failed before the export."""
    return [f"row {n}, column {_column(i)}: \"{cells[i]}\" is a spreadsheet error, not a value; fix what the formula "
            f"computes from in the spreadsheet and export again, or empty the cell"
            for i in columns if cells[i].upper() in SPREADSHEET_ERRORS]


def _long_table(header: list[str], rows: list[tuple[int, list[str]]], where: str) -> Attributes:
    """One fact a row. An entity's rows name it the same way once trimmed ("钟离 " is "钟离"); a spelling that only
    text_key makes the same (full-width forms, spaces inside) is an error, as it would otherwise split one entity in
    two."""
    cols = [i for i, h in enumerate(header) if h]
    out: Attributes = {}
    spelling: dict[str, tuple[int, str]] = {}  # text_key of an entity -> (its first row, its name there)
    first: dict[tuple[str, str], tuple[int, str]] = {}  # text_keys of (entity, attribute) -> (row, attribute there)
    errors: list[str] = []
    for n, raw in rows:
        if failed := _spreadsheet_errors(n, [c.strip() for c in raw], cols):
            errors += failed
            continue
        entity, attribute, value = (raw[i].strip() for i in cols)
        missing = [header[i] for i, c in zip(cols, (entity, attribute, value)) if not c]
        if missing:
            errors.append(f"row {n}: empty {', '.join(missing)}")
            continue
        r, spelt = spelling.setdefault(text_key(entity), (n, entity))
        if spelt != entity:
            errors.append(f"row {n}: {same_name(spelt, entity, 'entity')} (first in row {r}); write it one way")
            continue
        r, attr = first.setdefault((text_key(entity), text_key(attribute)), (n, attribute))
        if r != n:
            same = f"\"{attribute}\" again" if attr == attribute else same_name(attr, attribute, "attribute")
            errors.append(f"row {n}: \"{entity}\" / {same} (first in row {r}); keep one value per entity and "
                          f"attribute")
            continue
        out.setdefault(entity, {})[attribute] = value
    _raise(where, errors)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Spreadsheets: each cell as Excel shows it, or an error naming the cell


def _read_xlsx(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The first visible sheet (a hidden one is not what a person sees on opening the file), as text cells.

    A cell Excel would show as an error (#N/A, #DIV/0!...), a formula with no saved value (a workbook written by a
    program and never calculated: Excel computes on opening, openpyxl cannot), TRUE/FALSE (refused in JSON too) and
    cells merged across columns are errors naming the cell. Cells merged down one column give every row the value
    shown across them. Hidden rows and columns are read: they hold data, only out of sight."""
    try:
        from openpyxl import load_workbook
    except ImportError:  # a dependency of the kit; only a broken install lacks it
        raise DataError(f"{path}: reading .xlsx needs openpyxl: pip install openpyxl") from None
    try:
        book = load_workbook(path, data_only=True)  # not read_only: merged ranges are only known so
        formulas = load_workbook(path, read_only=True)  # the formulas, whose saved values `book` has
    except Exception as e:  # noqa: BLE001 - zipfile / openpyxl raise several types for a damaged or misnamed file
        raise DataError(f"{path}: not a readable .xlsx workbook ({type(e).__name__}: {e}); save it from Excel as "
                        f"\"Excel Workbook (.xlsx)\" or as CSV UTF-8") from None
    visible = [s for s in book.worksheets if s.sheet_state == "visible"]
    if not visible:
        raise DataError(f"{path}: every sheet is hidden; unhide the one with the table (Excel: right-click a sheet "
                        f"tab > Unhide)")
    sheet = visible[0]
    formula = {c.coordinate: str(getattr(c.value, "text", c.value)) for cells in formulas[sheet.title].iter_rows()
               for c in cells if getattr(c, "data_type", None) == "f"}
    formulas.close()
    at = f"sheet {sheet.title}"
    errors: list[str] = []
    rows: list[tuple[int, list[str]]] = []
    for cells in sheet.iter_rows(min_row=1, min_col=1):
        texts = []
        for c in cells:
            text = ""
            if c.data_type == "e":
                errors.append(f"{at}, cell {c.coordinate}: {c.value} is an Excel error, not a value; fix what it "
                              f"computes from, or clear the cell")
            elif c.value is None and c.coordinate in formula and c.data_type != "str":  # "str": a saved ""
                errors.append(f"{at}, cell {c.coordinate}: the formula {formula[c.coordinate]} has no saved value "
                              f"(the workbook was written by a program and never calculated); open it in Excel or "
                              f"LibreOffice and save it, or type the value in its place")
            elif isinstance(c.value, bool):
                errors.append(f"{at}, cell {c.coordinate}: {str(c.value).upper()} says nothing to phrase as a fact; "
                              f"write the value as words (yes / no, 是 / 否)")
            else:
                text = _shown(c.value, c.number_format)
            texts.append(text)
        rows.append((cells[0].row, texts))
    header_row = next((n for n, texts in rows if any(t.strip() for t in texts)), 0)
    for merged in sheet.merged_cells.ranges:
        top = rows[merged.min_row - 1][1][merged.min_col - 1]
        if not top.strip():
            continue
        if merged.min_col != merged.max_col:
            errors.append(f"{at}, cells {merged.coord}: merged across columns, so \"{top}\" would belong to column "
                          f"{_column(merged.min_col - 1)} only; unmerge them (Home > Merge & Center) and give each "
                          f"column its own value")
        elif merged.min_row <= header_row:
            errors.append(f"{at}, cells {merged.coord}: merged down from the header row; unmerge them: the header is "
                          f"one row, one name a column")
        else:
            for n in range(merged.min_row + 1, merged.max_row + 1):
                rows[n - 1][1][merged.min_col - 1] = top
    book.close()
    _raise(str(path), errors)
    return _split_header(rows, path)


def _shown(value: object, number_format: str) -> str:
    """A cell's value as Excel shows it, in the forms the kit writes facts in: numbers to Excel's 15 significant
    digits without a spurious .0, percentages as 15%, zero-padded number formats padded (00123), dates as
    2021-03-01 (a date-time at midnight too), times as 14:30, date-times as 2021-03-01 14:30 (with seconds where
    the format shows them or there are some). Other number formats (thousands separators, currency symbols,
    decimals shown) are not applied: the number is the fact."""
    from openpyxl.styles.numbers import is_datetime

    # the format for positive numbers (the first of up to four sections), without quoted text, \x and [colour]
    plain = re.sub(r'"[^"]*"|\\.|\[[^\]]*\]', "", number_format.split(";")[0])
    seconds = "s" in plain.lower()
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        if is_datetime(number_format) == "date" or value.time() == dt.time():
            return value.date().isoformat()
        return f"{value.date().isoformat()} {_clock(value.time(), seconds)}"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return _clock(value, seconds)
    if isinstance(value, dt.timedelta):  # a duration format ([h]:mm): hours past 24 as Excel shows them
        minutes, secs = divmod(round(value.total_seconds()), 60)
        return f"{minutes // 60}:{minutes % 60:02d}" + (f":{secs:02d}" if seconds or secs else "")
    if isinstance(value, (int, float)):
        if "%" in plain:
            decimals = re.search(r"\.(0*)", plain)
            return f"{value * 100:.{len(decimals.group(1)) if decimals else 0}f}%"
        if re.fullmatch(r"0{2,}", plain) and float(value).is_integer() and value >= 0:
            return str(int(value)).zfill(len(plain))
        if isinstance(value, float) and not value.is_integer():
            # Excel keeps 15 significant digits: 0.1 + 0.2 is 0.3 there, not 0.30000000000000004
            return format(Decimal(f"{value:.15g}"), "f")
        return _number(value)
    return str(value)


def _clock(t: dt.time, seconds: bool) -> str:
    return t.strftime("%H:%M:%S" if seconds or t.second else "%H:%M")


# ---------------------------------------------------------------------------------------------------------------------
# Conversation datasets


def _check_conversations(rows: list, where: str, lines: list[int] | None = None) -> list[dict]:
    """Rows checked: messages alternate user/assistant after an optional system message, end with the assistant,
    no empty content. Row numbers in errors are 1-based rows (or file lines for JSONL)."""
    errors: list[str] = []
    out = []
    for k, row in enumerate(rows):
        at = f"line {lines[k]}" if lines else f"row {k + 1}"
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            errors.append(f"{at}: \"messages\" must be a non-empty list of {{role, content}}")
            continue
        problem = None
        system = isinstance(messages[0], dict) and messages[0].get("role") == "system"
        turns = messages[1:] if system else messages
        for j, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                problem = f"message {j + 1}: role must be one of {', '.join(ROLES)}, got " \
                          f"{json.dumps(m.get('role') if isinstance(m, dict) else m, ensure_ascii=False)[:40]}"
                break
            if not isinstance(m.get("content"), str) or not m["content"].strip():
                problem = f"message {j + 1} ({m['role']}): content is empty or not text"
                break
        if problem is None:
            for j, m in enumerate(turns):
                want = "user" if j % 2 == 0 else "assistant"
                if m["role"] != want:
                    problem = (f"message {j + 1 + len(messages) - len(turns)} is \"{m['role']}\" where \"{want}\" "
                               f"comes (after an optional system message, user and assistant alternate)")
                    break
        if problem is None and (not turns or turns[-1]["role"] != "assistant"):
            problem = "the last message must be the assistant's (the answer to train on)"
        if problem:
            errors.append(f"{at}: {problem}")
            continue
        out.append(row)
    _raise(where, errors)
    if not out:
        raise DataError(f"{where}: no conversations")
    return out


def _from_datasets(ds, where: str) -> Conversations:
    from datasets import DatasetDict

    splits = dict(ds) if isinstance(ds, DatasetDict) else {"all": ds}
    out = {}
    for name, split in splits.items():
        if "messages" not in split.column_names:
            raise DataError(f"{where} (split {name}): no \"messages\" column (columns: "
                            f"{', '.join(split.column_names)}); the kit trains on chat rows [{{role, content}}, ...]")
        out[name] = _check_conversations(split.to_list(), f"{where} (split {name})")
    return Conversations(out, where)


def _load_saved(path: Path) -> Conversations:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets raises FileNotFoundError or its own errors
        raise DataError(f"{path}: a directory, but not one written by datasets' save_to_disk ({e}); point "
                        f"data.source at a file or at such a directory") from None
    return _from_datasets(ds, str(path))


def _load_hub(name: str) -> Conversations:
    from datasets import load_dataset

    try:
        ds = load_dataset(name)
    except Exception as e:  # noqa: BLE001 - offline, missing, private: each its own type
        raise DataError(f"hf:{name}: could not load the hub dataset ({type(e).__name__}: {str(e)[:200]}). Without "
                        f"hub access, download it where there is one (datasets.load_dataset(\"{name}\")"
                        f".save_to_disk(\"DIR\")) and set data.source=DIR") from None
    return _from_datasets(ds, f"hf:{name}")
