import json
import re

import pytest

from finetrace.corpus import iter_texts, read_records, read_texts
from finetrace.errors import FinetraceError


def test_txt_gives_one_document_per_nonblank_line(write):
    path = write("d.txt", "first doc\n\nsecond doc\n")
    assert read_records(path) == [{"text": "first doc"}, {"text": "second doc"}]


def test_jsonl_reads_text_and_chat_records(write):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    path = write("d.jsonl", json.dumps({"text": "plain"}) + "\n" + json.dumps(chat) + "\n")
    assert read_records(path) == [{"text": "plain"}, chat]


def test_custom_text_field(write):
    path = write("d.jsonl", json.dumps({"body": "x y"}) + "\n")
    assert read_records(path, text_field="body") == [{"text": "x y"}]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "", "holds no documents"),
        ("blank.txt", "\n \n", "holds no documents"),
        ("nofield.jsonl", '{"body": "x"}\n', "neither 'text' nor 'messages'"),
        ("badjson.jsonl", '{"text": "ok"}\n{"text": \n', "badjson.jsonl:2: invalid JSON"),
        ("latin1.txt", "ok\ncaf\xe9\n".encode("latin-1"), "latin1.txt:2 is not valid UTF-8"),
        ("list.jsonl", "[1, 2]\n", "expected a JSON object, got list"),
        ("noassistant.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n', "at least one assistant"),
        ("badrole.jsonl", '{"messages": [{"role": "bot", "content": "hi"}]}\n', "needs a role"),
        ("data.csv", "a,b\n", "unsupported format '.csv'"),
    ],
)
def test_bad_data_gives_clear_error(write, name, content, message):
    path = write(name, content)
    with pytest.raises(FinetraceError, match=re.escape(message)):
        read_records(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FinetraceError, match="does not exist"):
        read_records(tmp_path / "absent.jsonl")


def test_plain_text_corpus_refuses_chat(write):
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    with pytest.raises(FinetraceError, match="chat records"):
        read_texts(write("c.jsonl", json.dumps(chat) + "\n"))


def test_parquet_texts_stream_from_the_named_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["first", "", "second"], "id": [1, 2, 3]}), tmp_path / "c.parquet")
    assert list(iter_texts(tmp_path / "c.parquet", "body")) == ["first", "second"]
    with pytest.raises(FinetraceError, match="has no column 'text'"):
        list(iter_texts(tmp_path / "c.parquet"))


def test_a_dataset_directory_is_streamed_with_datasets(tmp_path):
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    assert list(iter_texts(folder)) == [f"doc {i}" for i in range(5)]
    with pytest.raises(FinetraceError, match="has no field 'body'"):
        list(iter_texts(folder, "body"))


def test_an_unknown_dataset_is_one_clear_error(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    # offline, as on a machine without the hub (the flags are read once, at import)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FinetraceError, match="neither a corpus file nor a loadable dataset"):
        list(iter_texts("no-such-user/no-such-dataset"))
