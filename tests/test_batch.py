"""Batch: the container every driver <-> worker arrow carries (rows of named tensors + object columns + meta)."""

import numpy as np
import pytest
import torch

from rl_trainer.batch import Batch


def make(rows: int = 4) -> Batch:
    return Batch({"x": torch.arange(rows * 2).view(rows, 2)}, {"uid": [f"u{i}" for i in range(rows)]}, {"t": 1.0})


def test_columns_must_agree_on_rows():
    with pytest.raises(ValueError, match="disagree on the number of rows"):
        Batch({"x": torch.zeros(3, 1)}, {"uid": ["a", "b"]})
    batch = make()
    with pytest.raises(ValueError, match="column 'y' has 3 rows, the batch has 4"):
        batch["y"] = torch.zeros(3)
    with pytest.raises(KeyError, match="'nope' is not in the batch"):
        batch["nope"]


def test_lists_become_object_columns_and_dicts_stay_whole():
    batch = Batch({}, {"extra_info": [{"a": 1}, {"b": 2}]})
    assert batch["extra_info"].dtype == object and batch["extra_info"][1] == {"b": 2}
    batch["raw_prompt"] = [[{"role": "user", "content": "hi"}], []]
    assert batch["raw_prompt"][0][0]["content"] == "hi" and len(batch) == 2


def test_repeat_interleave_and_tile():
    batch = make(2)
    inter = batch.repeat(2, interleave=True)  # [a, a, b, b]: rollout.n samples of a prompt side by side
    assert inter["x"].tolist() == [[0, 1], [0, 1], [2, 3], [2, 3]] and list(inter["uid"]) == ["u0", "u0", "u1", "u1"]
    tiled = batch.repeat(2, interleave=False)  # [a, b, a, b]
    assert tiled["x"].tolist() == [[0, 1], [2, 3], [0, 1], [2, 3]] and list(tiled["uid"]) == ["u0", "u1", "u0", "u1"]
    assert inter.meta == {"t": 1.0}


def test_chunk_split_index_concat_round_trip():
    batch = make(5)
    with pytest.raises(ValueError, match="cannot split a batch of 5 rows into 2 equal parts"):
        batch.chunk(2)
    parts = batch.split(2)  # 2 + 2 + 1: the last part is shorter
    assert [len(p) for p in parts] == [2, 2, 1]
    back = Batch.concat(parts)
    assert torch.equal(back["x"], batch["x"]) and list(back["uid"]) == list(batch["uid"])
    picked = batch.index(torch.tensor([4, 0]))
    assert picked["x"].tolist() == [[8, 9], [0, 1]] and list(picked["uid"]) == ["u4", "u0"]
    assert [len(c) for c in make(4).chunk(2)] == [2, 2]


def test_select_update_and_to():
    batch = make(2)
    only = batch.select("uid")
    assert "x" not in only and "uid" in only and only.meta == {"t": 1.0}
    with pytest.raises(KeyError):
        batch.select("missing")
    batch.update(Batch({"y": torch.ones(2)}, {}, {"validate": True}))
    assert "y" in batch and batch.meta == {"t": 1.0, "validate": True}
    with pytest.raises(ValueError, match="cannot merge a batch of 3 rows into one of 2"):
        batch.update(Batch({"z": torch.ones(3)}))
    assert batch.to("cpu")["x"].device.type == "cpu"
    assert isinstance(batch.to("cpu")["uid"], np.ndarray)
