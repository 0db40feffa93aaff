"""SFT examples and preference pairs: the trained tokens by hand, both SFT spellings, and the bad-input lines."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from rl_trainer.errors import UserError
from rl_trainer.models.builtin import build_sort_tokenizer
from rl_trainer.supervised import data as sdata


@pytest.fixture(scope="module")
def tok():
    return build_sort_tokenizer()  # <pad> 0, EOS 1, digits 2..11, "=" 12


def sft_section(**overrides):
    base = dict(messages_key="messages", prompt_key=None, response_key=None, max_length=32, truncation="error",
                apply_chat_template_kwargs={})
    return OmegaConf.create({**base, **overrides})


def write(tmp_path, name, rows):
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_response_only_mask_by_hand(tok, tmp_path):
    # "31=" is the templated prompt (context), "13" + EOS the assistant turn (trained):
    # ids: 3->5, 1->3, = ->12, 1->3, 3->5, EOS->1
    path = write(tmp_path, "sft.parquet", [{"messages": [{"role": "user", "content": "31"},
                                                          {"role": "assistant", "content": "13"}]}])
    (example,) = sdata.load_sft_examples([path], sft_section(), tok, -1, "data.train_files")
    assert example.input_ids == [5, 3, 12, 3, 5, 1]
    assert example.target_mask == [0, 0, 0, 1, 1, 1]


def test_two_assistant_turns_are_both_trained(tok, tmp_path):
    turns = [{"role": "user", "content": "2"}, {"role": "assistant", "content": "4"},
             {"role": "user", "content": "6"}, {"role": "assistant", "content": "8"}]
    path = write(tmp_path, "multi.parquet", [{"conv": turns}])
    (example,) = sdata.load_sft_examples([path], sft_section(messages_key="conv"), tok, -1, "data.train_files")
    # "2=" "4<eos>" "6=" "8<eos>": ids 4 12 | 6 1 | 8 12 | 10 1
    assert example.input_ids == [4, 12, 6, 1, 8, 12, 10, 1]
    assert example.target_mask == [0, 0, 1, 1, 0, 0, 1, 1]


def test_older_spelling_reaches_into_dict_columns(tok, tmp_path):
    path = write(tmp_path, "gsm.parquet", [{"extra_info": {"question": "21", "answer": "12"}}])
    data = sft_section(prompt_key="extra_info", response_key="extra_info", prompt_dict_keys=["question"],
                       response_dict_keys=["answer"])
    (example,) = sdata.load_sft_examples([path], data, tok, -1, "data.train_files")
    # prompt "21=" (context), response "12" + EOS (trained): the same sequence as the messages spelling gives
    assert example.input_ids == [4, 3, 12, 3, 4, 1]
    assert example.target_mask == [0, 0, 0, 1, 1, 1]


def test_truncation(tok, tmp_path):
    path = write(tmp_path, "long.parquet", [{"messages": [{"role": "user", "content": "987"},
                                                           {"role": "assistant", "content": "789"}]}])
    with pytest.raises(UserError, match="more than data.max_length=5; raise data.max_length"):
        sdata.load_sft_examples([path], sft_section(max_length=5), tok, -1, "data.train_files")
    (left,) = sdata.load_sft_examples([path], sft_section(max_length=5, truncation="left"), tok, -1, "k")
    assert left.input_ids == [12, 9, 10, 11, 1] and left.target_mask == [0, 1, 1, 1, 1]


@pytest.mark.parametrize("case, match", [
    ("missing_messages", r"sft.parquet has no column 'messages' \(columns: text\); set the data.\*_key"),
    ("missing_dict_key", r"row 0 data.prompt_key: no key 'question' in \['answer', 'q'\]; fix the \*_dict_keys"),
    ("empty", r"data.train_files: .*empty.parquet has no rows; pass a non-empty parquet file"),
    ("one_of_two", r"data.prompt_key and data.response_key go together"),
])
def test_sft_bad_input(tok, tmp_path, case, match):
    if case == "missing_messages":
        path, data = write(tmp_path, "sft.parquet", [{"text": "1"}]), sft_section()
    elif case == "missing_dict_key":
        path = write(tmp_path, "d.parquet", [{"extra_info": {"q": "1", "answer": "1"}}])
        data = sft_section(prompt_key="extra_info", response_key="extra_info", prompt_dict_keys=["question"])
    elif case == "empty":
        path = str(tmp_path / "empty.parquet")
        pq.write_table(pa.table({"messages": pa.array([], type=pa.string())}), path)
        data = sft_section()
    else:
        path, data = write(tmp_path, "p.parquet", [{"prompt": "1"}]), sft_section(prompt_key="prompt")
    with pytest.raises(UserError, match=match):
        sdata.load_sft_examples([path], data, tok, -1, "data.train_files")


def rm_section(**overrides):
    base = dict(prompt_key="prompt", chosen_key="chosen", rejected_key="rejected", margin_key=None, max_length=32,
                truncation="error", apply_chat_template_kwargs={})
    return OmegaConf.create({**base, **overrides})


def test_pairs_strings_and_messages_give_the_same_ids(tok, tmp_path):
    strings = write(tmp_path, "s.parquet", [{"prompt": "21", "chosen": "12", "rejected": "21", "m": 0.5}])
    messages = write(tmp_path, "m.parquet", [{"prompt": [{"role": "user", "content": "21"}],
                                              "chosen": [{"role": "assistant", "content": "12"}],
                                              "rejected": [{"role": "assistant", "content": "21"}]}])
    (a,) = sdata.load_preference_pairs([strings], rm_section(margin_key="m"), tok, -1, "data.train_files")
    (b,) = sdata.load_preference_pairs([messages], rm_section(), tok, -1, "data.train_files")
    # "21=" + "12" + EOS and "21=" + "21" + EOS
    assert a.chosen == b.chosen == [4, 3, 12, 3, 4, 1] and a.rejected == b.rejected == [4, 3, 12, 4, 3, 1]
    assert a.margin == 0.5 and b.margin == 0.0


@pytest.mark.parametrize("rows, section, match", [
    ([{"prompt": "1", "chosen": "1"}], {}, r"has no column 'rejected' \(columns: prompt, chosen\)"),
    ([{"prompt": "1", "chosen": "1", "rejected": "1"}] * 3, {},
     "chosen and rejected are identical in every row"),
    ([{"chosen": "1", "rejected": "2"}], {}, "has no column 'prompt'; set data.prompt_key"),
    ([{"prompt": "1", "chosen": "1", "rejected": "2"}], {"margin_key": "margin"}, "has no column 'margin'"),
])
def test_pairs_bad_input(tok, tmp_path, rows, section, match):
    path = write(tmp_path, "pairs.parquet", rows)
    with pytest.raises(UserError, match=match):
        sdata.load_preference_pairs([path], rm_section(**section), tok, -1, "data.train_files")


def test_empty_preference_file(tok, tmp_path):
    path = str(tmp_path / "empty.parquet")
    pq.write_table(pa.table({k: pa.array([], type=pa.string()) for k in ("prompt", "chosen", "rejected")}), path)
    with pytest.raises(UserError, match="has no rows"):
        sdata.load_preference_pairs([path], rm_section(), tok, -1, "data.train_files")
