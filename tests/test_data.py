"""Corpora and tokenizers: local loaders on files written here, the embedded default, hub errors offline."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lenbench.data import corpora, dedup, tokenizer
from lenbench.data.corpora import in_validation, load_corpus, parse_dataset, tokenize_corpus
from lenbench.data.dedup import content_key
from lenbench.data.tokenizer import ByteTokenizer, load_tokenizer
from lenbench.errors import LenbenchError

# distinct documents: no 32-byte chunk of one occurs in another, so none is a near-duplicate
DOCS = [f"document {i}: " + " ".join(f"w{i}x{j}" for j in range(i + 1)) + " \u00e9t\u00e9" for i in range(30)]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path_factory.getbasetemp() / "lenbench-cache"
    monkeypatch.setenv("LENBENCH_CACHE", str(root))
    return root


def all_texts(corpus: corpora.Corpus) -> list[str]:
    return list(corpus.train["text"]) + list(corpus.validation["text"])


def test_txt_files_one_document_per_file(tmp_path: Path) -> None:
    for i, doc in enumerate(DOCS):
        (tmp_path / f"d{i:02d}.txt").write_text(doc + "\nsecond line\n")
    for spec_text in (str(tmp_path / "*.txt"), str(tmp_path)):
        spec = parse_dataset(spec_text, {})
        assert spec.kind == "local"
        corpus = load_corpus(spec, 0.3)
        assert sorted(all_texts(corpus)) == sorted(d + "\nsecond line\n" for d in DOCS)
        assert corpus.info["documents"] == {"train": len(corpus.train), "validation": len(corpus.validation)}
        expected = [d for d in all_texts(corpus) if in_validation(content_key(d), 0.3)]
        assert list(corpus.validation["text"]) == expected
        assert corpus.info["near_duplicates"]["validation_before"] == len(expected)
        assert corpus.info["near_duplicates"]["dropped"] == 0  # the documents share no 32-byte chunk


def test_jsonl_with_configured_field(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"content": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    corpus = load_corpus(parse_dataset(str(path), {}, field_override="content"), 0.3)
    assert sorted(all_texts(corpus)) == sorted(DOCS)
    assert corpus.train.column_names == ["text"]
    with pytest.raises(LenbenchError, match=r"no field 'text' \(columns: content, id\)"):
        load_corpus(parse_dataset(str(path), {}), 0.3)


def test_parquet_and_catalogue_entry(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"body": DOCS}), path)
    catalogue = {"mine": {"source": str(tmp_path / "*.parquet"), "field": "body"}}
    spec = parse_dataset("mine", catalogue)
    assert (spec.kind, spec.field, spec.label) == ("local", "body", "mine")
    corpus = load_corpus(spec, 0.3)
    assert sorted(all_texts(corpus)) == sorted(DOCS)
    tok = tokenize_corpus(corpus, ByteTokenizer())
    split = tok.validation
    texts = list(corpus.validation["text"])
    assert split.num_documents == len(texts)
    for i, text in enumerate(texts):
        assert ByteTokenizer().decode(split.document(i)) == text
        assert split.tokens[split.offsets[i + 1] - 1] == ByteTokenizer.sep_id
    folders = set((cache / "tokens").iterdir())
    again = tokenize_corpus(load_corpus(spec, 0.3), ByteTokenizer())  # same fingerprint: served from the cache
    assert set((cache / "tokens").iterdir()) == folders and isinstance(again.train.tokens, np.memmap)
    assert np.array_equal(np.asarray(again.train.tokens), np.asarray(tok.train.tokens))


def test_bad_local_specs(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.csv").write_text("x")
    (tmp_path / "c.jsonl").write_text("{}\n")
    with pytest.raises(LenbenchError, match="mixes file types"):
        parse_dataset(str(tmp_path / "[ac].*"), {})
    with pytest.raises(LenbenchError, match="unsupported file"):
        parse_dataset(str(tmp_path / "b.csv"), {})
    with pytest.raises(LenbenchError, match="unknown dataset 'nope'"):
        parse_dataset("nope", {})
    with pytest.raises(LenbenchError, match="no .txt"):
        parse_dataset(str(tmp_path / "*.parquet"), {})
    with pytest.raises(LenbenchError, match="'books3' has no source.*--dataset default"):
        parse_dataset("books3", {"books3": {"source": None, "note": "taken down"}})


def test_hf_spec_parsing() -> None:
    spec = parse_dataset("hf:org/name:cfg@validation", {})
    assert (spec.kind, spec.source, spec.config, spec.split, spec.label) == (
        "hf",
        "org/name",
        "cfg",
        "validation",
        "org/name:cfg@validation",
    )
    arxiv = parse_dataset("arxiv", {"arxiv": {"source": "hf:some/arxiv", "field": "article"}})
    assert (arxiv.name, arxiv.kind, arxiv.source, arxiv.field) == ("arxiv", "hf", "some/arxiv", "article")


def test_embedded_default_is_deterministic() -> None:
    first = load_corpus(parse_dataset("default", {}), 0.05)
    second = load_corpus(parse_dataset("default", {}), 0.05)
    assert len(first.train) > 100 and len(first.validation) > 5
    assert list(first.validation["path"]) == list(second.validation["path"])
    assert first.fingerprint == second.fingerprint
    assert all(in_validation(content_key(t), 0.05) for t in first.validation["text"])
    assert not any(in_validation(content_key(t), 0.05) for t in first.train["text"])
    paths = list(first.train["path"]) + list(first.validation["path"])
    assert "os.py" in paths and not any(p.startswith(("test/", "site-packages/")) for p in paths)
    assert first.info["python"].endswith(sys.version.split()[0])


def test_unreachable_hub_dataset_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    retry_logger = logging.getLogger("huggingface_hub.utils._http")
    warned: list[bool] = []

    def offline(repo: str, config: str | None, split: str | None) -> Any:
        # huggingface_hub logs a warning per HTTP retry: lenbench silences them, its one line is all
        warned.append(retry_logger.isEnabledFor(logging.WARNING))
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (OfflineModeIsEnabled)\nmore detail")

    monkeypatch.setattr(corpora, "_hub_load", offline)
    level = retry_logger.getEffectiveLevel()
    with pytest.raises(LenbenchError) as info:
        load_corpus(parse_dataset("hf:someone/corpus:en", {}), 0.05)
    message = str(info.value)
    assert "\n" not in message
    assert "hf:someone/corpus:en" in message and "--dataset default" in message and "local files" in message
    assert warned == [False] and retry_logger.getEffectiveLevel() == level  # silenced, then restored
    with pytest.raises(LenbenchError, match=r"cannot load dataset arxiv \(hf:some/arxiv\) from the Hugging"):
        load_corpus(parse_dataset("arxiv", {"arxiv": {"source": "hf:some/arxiv", "field": "text"}}), 0.05)


# A fresh interpreter, as the CLI is: importing huggingface_hub inside the load (as the real loader
# does) configures its logger then, and its retry warnings must still not reach stderr. The retries
# go to a closed port on the loopback interface: no network call.
RETRYING_LOADER = """
import sys
from lenbench.data import corpora
from lenbench.errors import LenbenchError

def retrying(repo, config, split):
    from huggingface_hub.utils import http_backoff

    http_backoff("HEAD", "http://127.0.0.1:9/" + repo, max_retries=2, base_wait_time=0, max_wait_time=0)

corpora._hub_load = retrying
try:
    corpora.load_corpus(corpora.parse_dataset("hf:someone/corpus", {}), 0.05)
except LenbenchError as exc:
    print(exc, file=sys.stderr)
"""


def test_hub_retry_warnings_are_silenced() -> None:
    done = subprocess.run([sys.executable, "-c", RETRYING_LOADER], capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("cannot load dataset hf:someone/corpus from the Hugging Face Hub")


def test_real_loader_offline_gives_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(LenbenchError) as info:
        load_corpus(parse_dataset("hf:lenbench-tests/no-such-dataset", {}), 0.05)
    assert "\n" not in str(info.value) and "hf:lenbench-tests/no-such-dataset" in str(info.value)


def test_byte_tokenizer_and_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    tok = load_tokenizer("bytes")
    (ids,) = tok.encode_batch(["h\u00e9"])
    assert list(ids) == [104, 195, 169] and tok.vocab_size == 257 and tok.sep_id == 256
    assert tok.decode([*ids, 256]) == "h\u00e9"
    with pytest.raises(LenbenchError, match="unknown tokenizer"):
        load_tokenizer("gpt2")
    monkeypatch.setattr(tokenizer, "_import", lambda name: None)
    with pytest.raises(LenbenchError, match="needs the 'tokenizers' or 'transformers' package"):
        load_tokenizer("hf:gpt2")


def test_hf_tokenizer_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    class Encoding:
        def __init__(self, text: str) -> None:
            self.ids = [len(w) for w in text.split()]

    class FakeTokenizer:
        @classmethod
        def from_pretrained(cls, name: str) -> FakeTokenizer:
            if name == "missing":
                raise OSError("Repository not found\nlong story")
            return cls()

        def get_vocab_size(self, with_added_tokens: bool = True) -> int:
            return 100

        def token_to_id(self, token: str) -> int | None:
            return 99 if token == "<|endoftext|>" else None

        def encode_batch(self, texts: list[str]) -> list[Encoding]:
            return [Encoding(t) for t in texts]

        def decode(self, ids: list[int]) -> str:
            return " ".join("x" * i for i in ids)

    fake = types.SimpleNamespace(Tokenizer=FakeTokenizer)
    monkeypatch.setattr(tokenizer, "_import", lambda name: fake if name == "tokenizers" else None)
    tok = load_tokenizer("hf:fake")
    assert (tok.name, tok.vocab_size, tok.sep_id) == ("hf:fake", 100, 99)
    assert [list(x) for x in tok.encode_batch(["ab cde", "f"])] == [[2, 3], [1]]
    with pytest.raises(LenbenchError, match=r"cannot load tokenizer hf:missing \(Repository not found\)"):
        load_tokenizer("hf:missing")


def test_content_split_keeps_copies_together_and_drops_near_duplicates(tmp_path: Path) -> None:
    base = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(40))
    # a whitespace-only variant of each of these documents goes to the same side as the original
    docs = [f"{i} " + "".join(f"w{i}-{j} " for j in range(60)) for i in range(40)]
    for i, doc in enumerate(docs):
        (tmp_path / f"a{i:02d}.txt").write_text(doc)
        (tmp_path / f"b{i:02d}.txt").write_text(doc.replace(" ", "\n  "))
    # a near-twin pair: one of them is in validation, the other in training (found by content key)
    twin_a, twin_b = base + "first ending", base + "second ending"
    (tmp_path / "twin_a.txt").write_text(twin_a)
    (tmp_path / "twin_b.txt").write_text(twin_b)
    fraction = 0.3
    assert in_validation(content_key(twin_a), fraction) != in_validation(content_key(twin_b), fraction)
    corpus = load_corpus(parse_dataset(str(tmp_path), {}), fraction)
    val, train = list(corpus.validation["text"]), list(corpus.train["text"])
    for doc in docs:
        variant = doc.replace(" ", "\n  ")
        assert (doc in val and variant in val) or (doc in train and variant in train)
    assert twin_a not in val and twin_b not in val and (twin_a in train or twin_b in train)
    record = corpus.info["near_duplicates"]
    assert record["dropped"] == 1 and record["validation_before"] == len(val) + 1


def test_window_and_chunk_hashes() -> None:
    data = bytes(range(40))
    windows = dedup.window_hashes(data, 4)
    p = dedup.FNV_PRIME
    assert len(windows) == 37
    assert int(windows[0]) == (0 * p**3 + 1 * p**2 + 2 * p + 3) % 2**64
    assert int(windows[5]) == (5 * p**3 + 6 * p**2 + 7 * p + 8) % 2**64
    assert list(dedup.chunk_hashes(data, 4)) == list(windows[0:37:4])  # chunks at 0, 4, ..., 36
    assert len(dedup.chunk_hashes(data[:39], 4)) == 9  # the 3-byte tail is no chunk
    assert len(dedup.window_hashes(b"abc", 4)) == 0
    same = dedup.window_hashes(b"xxabcdyyyabcd", 4)
    assert same[2] == same[9] and len(set(same.tolist())) == 9  # equal windows, equal hashes; others differ


def test_chunk_overlap_on_small_documents() -> None:
    train = ["0123456789abcdef" * 4, "unrelated text, nothing shared."]
    validation = [
        "0123" + "4567" + "zzzz" + "89ab",  # chunks 0123, 4567, zzzz, 89ab: 3 of 4 occur in training
        "4567" + "qqqq" + "rrrr" + "ssss" + "t",  # 1 of 4 (the 1-byte tail is no chunk)
        "cdef",  # occurs in training at an offset that is not a multiple of 4
        "abc",  # shorter than one chunk
        "wxyz" * 3,
    ]
    overlap = dedup.chunk_overlap(validation, train, width=4)
    assert overlap.chunks.tolist() == [4, 4, 1, 0, 3]
    assert overlap.shared.tolist() == [3, 1, 1, 0, 0]
    assert overlap.shares().tolist() == [0.75, 0.25, 1.0, 0.0, 0.0]
    assert dedup.near_duplicates(validation, train, max_shared=0.25, width=4) == [0, 1, 2]
    assert dedup.near_duplicates(validation, train, max_shared=0.5, width=4) == [0, 2]
    assert dedup.near_duplicates(validation, iter([]), width=4) == []
    assert content_key("  a\r\n\tb  c ") == "a b c"


def test_embedded_validation_shares_under_a_fifth_of_its_chunks_with_training() -> None:
    """Exact bytes, not the hashes of ``dedup``: every aligned 32-byte chunk of each validation document is
    looked up among all 32-byte windows of the training documents."""
    corpus = load_corpus(parse_dataset("default", {}), 0.05)
    width = 32
    chunks_of = {}
    for path, text in zip(corpus.validation["path"], corpus.validation["text"], strict=True):
        data = text.encode("utf-8")
        chunks_of[path] = [data[i : i + width] for i in range(0, len(data) - width + 1, width)]
    pool = np.unique(np.array([c for cs in chunks_of.values() for c in cs], dtype=f"S{width}"))
    seen = np.zeros(len(pool), dtype=bool)
    for text in corpus.train["text"]:
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        if len(data) < width:
            continue
        windows = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(data, width)).view(f"S{width}")
        windows = windows.ravel()
        where = np.minimum(np.searchsorted(pool, windows), len(pool) - 1)
        seen[where[pool[where] == windows]] = True
    shares = {
        path: seen[np.searchsorted(pool, np.array(cs, dtype=f"S{width}"))].mean() if cs else 0.0
        for path, cs in chunks_of.items()
    }
    assert max(shares.values()) < dedup.MAX_SHARED, max(shares.items(), key=lambda kv: kv[1])
    # the near-twins of training files that the path-hash split used to put in validation
    leaks = {f"encodings/{n}.py" for n in ("cp858", "cp865", "mac_iceland", "mac_arabic", "iso8859_6")}
    assert not leaks & set(shares)
    record = corpus.info["near_duplicates"]
    assert record["dropped"] == len(record["dropped_paths"]) > 0
    assert record["validation_before"] - record["dropped"] == len(corpus.validation) >= 10


# Code, prose, unicode and odd whitespace, so the round trip covers what a corpus holds.
BPE_TEXTS = [
    "def f(x):\n    return x + 1\n\n\tif  x:\r\n        pass   \n",
    "caf\u00e9 na\u00efve \u4e2d\u6587 \U0001f917 e\u0301 \u00a0nbsp\u2028sep",
    "   leading and trailing   ",
    "\n\n\n",
    "",
    "<|endoftext|> is plain text here",
]


@pytest.fixture
def small_corpus(tmp_path: Path) -> corpora.Corpus:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(40):
        lines = [f"def function_{i}_{j}(value):\n    return value * {j} + {i}  # caf\u00e9\n" for j in range(i % 7 + 3)]
        (folder / f"m{i:02d}.txt").write_text("".join(lines) + BPE_TEXTS[i % len(BPE_TEXTS)] + "end\n")
    return load_corpus(parse_dataset(str(folder), {}), 0.2)


def test_bpe_trains_offline_and_round_trips(small_corpus: corpora.Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the BPE tokenizer must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    tok = load_tokenizer("bpe:300", small_corpus)
    assert (tok.vocab_size, tok.sep_id) == (300, 299) and tok.name.startswith("bpe:300@")
    for text in BPE_TEXTS:
        (ids,) = tok.encode_batch([text])
        assert ids.max(initial=0) < tok.sep_id
        assert tok.decode(ids) == text
        assert tok.decode([*ids, tok.sep_id]) == text  # the separator decodes to nothing
    # merges were learned: the training text takes fewer tokens than bytes
    sample = small_corpus.train[0]["text"]
    assert len(tok.encode_batch([sample])[0]) < 0.6 * len(sample.encode("utf-8"))
    tokenized = tokenize_corpus(small_corpus, tok)
    split = tokenized.validation
    for i, text in enumerate(small_corpus.validation["text"]):
        assert tok.decode(split.document(i)) == text and split.tokens[split.offsets[i + 1] - 1] == tok.sep_id


def test_bpe_is_deterministic_and_cached(small_corpus: corpora.Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    from lenbench.data import bpe

    first, second = bpe.train_bpe(small_corpus, 320), bpe.train_bpe(small_corpus, 320)
    assert first.to_str() == second.to_str()
    assert first.get_vocab_size() == 319  # the byte alphabet and 63 merges; the separator is id 319
    tok = load_tokenizer("bpe:320", small_corpus)
    path = bpe.bpe_cache_path(small_corpus, 320)
    assert path.exists() and path.read_text(encoding="utf-8") == first.to_str()

    def no_training(corpus: corpora.Corpus, vocab_size: int) -> Any:
        raise AssertionError("served from the cache, not trained again")

    monkeypatch.setattr(bpe, "train_bpe", no_training)
    again = load_tokenizer("bpe:320", small_corpus)
    assert again.name == tok.name
    assert [list(x) for x in again.encode_batch(BPE_TEXTS)] == [list(x) for x in tok.encode_batch(BPE_TEXTS)]
    assert bpe.bpe_cache_path(small_corpus, 330) != path  # keyed by vocabulary size too
    with pytest.raises(AssertionError, match="served from the cache"):
        load_tokenizer("bpe:330", small_corpus)


@pytest.mark.parametrize("spec", ["bpe:", "bpe:abc", "bpe:257", "bpe:-5", "bpe4096", "bpe:4096.0"])
def test_bad_bpe_specs_are_one_line_errors(spec: str) -> None:
    with pytest.raises(LenbenchError, match="bpe|unknown tokenizer"):
        tokenizer.check_tokenizer_spec(spec)
    with pytest.raises(LenbenchError):
        load_tokenizer(spec)


def test_bpe_spec_vocab_and_missing_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    from lenbench.data import bpe

    assert tokenizer.spec_vocab_size("bpe") == bpe.DEFAULT_VOCAB
    assert tokenizer.spec_vocab_size("bpe:8192") == 8192 and tokenizer.spec_vocab_size("bytes") == 257
    with pytest.raises(LenbenchError, match="training split; none was given"):
        load_tokenizer("bpe:512")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers -> ImportError
    with pytest.raises(LenbenchError, match=r"needs the 'tokenizers' package \(pip install tokenizers\)"):
        bpe.load_bpe("bpe:512", types.SimpleNamespace())  # type: ignore[arg-type]
