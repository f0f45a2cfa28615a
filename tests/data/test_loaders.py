import gzip
import json

import pytest

from kd_edge.config import recipe_from_dict
from kd_edge.data.config import DataConfig
from kd_edge.data.loaders import BUNDLED, read_rows
from kd_edge.data.run import load_examples, split
from kd_edge.errors import ArtifactError, ConfigError


def _recipe(**data):
    return recipe_from_dict({"name": "x", "teacher": {"model": "m"}, "data": data}, "test")


def test_bundled_vader_has_every_source_and_license():
    rows = [json.loads(line) for line in gzip.open(BUNDLED["vader"], "rt")]
    assert len(rows) == 23703
    assert {r["source"] for r in rows} == {"movie", "tweets", "nyt", "amazon"}
    movie = [r for r in rows if r["source"] == "movie" and r["label"] is not None]
    assert len(movie) == 10072
    assert (BUNDLED["vader"].parent / "LICENSE.txt").read_text().startswith("The MIT License")
    assert "Hutto" in (BUNDLED["vader"].parent / "README.md").read_text()


def test_where_filter_and_labels():
    examples = load_examples(_recipe(where={"source": "movie"}, max_samples=50))
    assert len(examples) == 50
    assert all(e["label"] in (0, 1, None) for e in examples)


def test_csv_and_text_formats(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("sentence,y\nhello there,1\nbad day,0\n")
    rows = read_rows(DataConfig(source=str(csv_path)))
    assert rows == [{"sentence": "hello there", "y": "1"}, {"sentence": "bad day", "y": "0"}]
    txt = tmp_path / "d.txt"
    txt.write_text("one\n\ntwo\n")
    assert read_rows(DataConfig(source=str(txt))) == [{"text": "one"}, {"text": "two"}]


def test_bad_jsonl_line_names_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(ArtifactError, match="line 2 is not valid JSON"):
        read_rows(DataConfig(source=str(path)))


def test_missing_text_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"sentence": "a"}\n')
    with pytest.raises(ConfigError, match="data.text_field 'text' is not a column.*columns: sentence"):
        load_examples(_recipe(source=str(path)))


def test_label_names_and_ids_do_not_mix(tmp_path):
    from kd_edge.data.run import read_examples

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": ["pos", 1][i % 2]}) + "\n" for i in range(6)))
    with pytest.raises(ConfigError, match="mixes class ids .* and names"):
        read_examples(_recipe(source=str(path)))


def test_filter_matching_nothing():
    with pytest.raises(ArtifactError, match="no row of 'bundled:vader' matches"):
        load_examples(_recipe(where={"source": "radio"}))


def test_split_is_seeded_and_disjoint():
    rows = [{"text": str(i), "label": None} for i in range(100)]
    train, test = split(rows, 0.2, seed=3)
    assert len(test) == 20 and len(train) == 80
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    assert split(rows, 0.2, seed=3) == (train, test)
    assert split(rows, 20, seed=3)[1] == test


def test_split_leaving_no_training_rows():
    with pytest.raises(ConfigError, match="leaves no training rows"):
        split([{"text": "a"}] * 5, 5, seed=0)


def test_labels_by_name_become_ids_with_their_names_kept():
    from kd_edge.data.config import DataConfig
    from kd_edge.data.run import _label, encode_labels

    assert [_label(v) for v in (1, "1", 1.0, "2.0", "", None, "pos", True)] == [1, 1, 1, 2, None, None, "pos", 1]
    rows = [{"label": "pos"}, {"label": "neg"}, {"label": None}, {"label": "pos"}]
    assert encode_labels(rows, DataConfig()) == ["neg", "pos"]
    assert [r["label"] for r in rows] == [1, 0, None, 1]
    rows = [{"label": "pos"}, {"label": "neg"}]
    assert encode_labels(rows, DataConfig(label_names=["pos", "neg"])) == ["pos", "neg"]  # the order given
    assert [r["label"] for r in rows] == [0, 1]
    ids = [{"label": 0}, {"label": 2}]
    assert encode_labels(ids, DataConfig()) is None and [r["label"] for r in ids] == [0, 2]
