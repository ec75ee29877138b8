"""A small corpus laid out like s3://policy-database that exercises every prep_data rule.

Texts that must reach the data set start with "KEEP"; texts that must not start with "SKIP". The same files are
committed under pipeline/sample_corpus/ for the local quickstart (test_int_sample_corpus_is_the_generated_one).
"""

from __future__ import annotations

import json
from pathlib import Path


def jl(*items) -> bytes:
    return "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items).encode()


def ops(n: int) -> dict[str, bytes]:
    return {f"operatives/op-{i:04d}.jsonl": jl({"text": f"KEEP operative {i}"}) for i in range(n)}


def corpus(operatives: int = 10) -> dict[str, bytes]:
    files = {
        # JSONL: 3 good lines, and 4 rejected (bad JSON, empty text, missing text, non-object).
        "corpus_federal/doc1.jsonl": jl({"text": "KEEP federal 1"}, {"text": "KEEP federal 2", "id": 7},
                                        "{not json", {"text": "   "}, {"title": "no text"}, '"a bare string"',
                                        {"text": "KEEP shared text"}),
        "corpus_federal/processed/old.jsonl": jl({"text": "SKIP processed at the prefix top"}),
        "corpus_federal/2024/q1/failed/bad.jsonl": jl({"text": "SKIP failed at depth"}),
        "corpus_federal/notes/processed_summary.jsonl": jl({"text": "KEEP processed only in a file name"}),
        # Pretty-printed JSON document and a pretty array (one element has a non-string text).
        "econ-theory/pretty.json": json.dumps({"text": "KEEP pretty\ndocument", "meta": {"a": 1}},
                                              indent=2).encode(),
        "econ-theory/array.json": json.dumps([{"text": "KEEP array 1"}, {"text": 42}, {"text": "KEEP array 2"}],
                                             indent=4).encode(),
        "econ-theory/behavioral-economics/news/garbage.jsonl": jl({"text": "SKIP behavioral news"}),
        "econ-theory/behavioral-economics/papers/ok.jsonl": jl({"text": "KEEP behavioral paper"}),
        "econ-theory/processed/x.json": json.dumps({"text": "SKIP econ processed"}).encode(),
        # financial-metrics keeps processed/ and failed/ at any depth.
        "financial-metrics/processed/m.jsonl": jl({"text": "KEEP metrics processed"}),
        "financial-metrics/failed/f.jsonl": jl({"text": "KEEP metrics failed"}),
        "financial-metrics/2023/processed/deep.jsonl": jl({"text": "KEEP metrics deep processed"}),
        # Keys with spaces; plain text; a duplicate of an earlier text.
        "financial-networks/graph notes/edge list.txt": b"KEEP plain text with spaces in the key\nsecond line\n",
        "financial-networks/dup.jsonl": jl({"text": "KEEP shared text"}),
        "financial-networks/sub/failed/z.txt": b"SKIP networks failed\n",
        "insurance/policy.txt": b"KEEP insurance policy text",
        "insurance/empty.txt": b"  \n\n",
        "insurance/blob.bin": b"\xff\xfe\x00not utf-8",
        "government_officials_roster/roster.jsonl": jl({"text": "KEEP roster 1"}, {"text": "KEEP roster 2"}),
        # JSON Lines inside a .json file, key with spaces.
        "usa/congressional-research/crs report 2024.json": jl({"text": "KEEP crs 1"}, {"text": "KEEP crs 2"}),
        "usa/other/not-a-source.jsonl": jl({"text": "SKIP outside every prefix"}),
        "operatives/processed/p.jsonl": jl({"text": "SKIP operatives processed"}),
        # An operative repeating a policy text: the duplicate is counted against operatives (policy came first).
        "operatives/op-0000.jsonl": jl({"text": "KEEP shared text"}, {"text": "KEEP operative 0"}),
    }
    more = ops(operatives)
    more.pop("operatives/op-0000.jsonl", None)
    files.update(more)
    return files


# What prep_data must produce from corpus() with no operatives cap in effect (operatives texts added by count).
POLICY_KEEP = {
    "KEEP federal 1", "KEEP federal 2", "KEEP shared text", "KEEP processed only in a file name",
    "KEEP pretty\ndocument", "KEEP array 1", "KEEP array 2", "KEEP behavioral paper", "KEEP metrics processed",
    "KEEP metrics failed", "KEEP metrics deep processed", "KEEP plain text with spaces in the key\nsecond line\n",
    "KEEP insurance policy text", "KEEP roster 1", "KEEP roster 2", "KEEP crs 1", "KEEP crs 2",
}
# doc1: 4; array.json: 1; insurance/empty.txt: 1; insurance/blob.bin: 1.
REJECTED = 7


def write_dir(root: Path, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def upload(s3, bucket: str, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
