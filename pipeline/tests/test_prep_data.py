"""prep_data against the moto endpoint's S3 (real boto3) and against a local directory."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import PIPELINE, read_outputs, run_program
from corpus import POLICY_KEEP, REJECTED, corpus, upload, write_dir

sys.path.insert(0, str(PIPELINE))
import prep_data  # noqa: E402


def rows(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        assert isinstance(obj["text"], str) and obj["text"].strip()
        out.append(obj["text"])
    return out


def run_prep(tmp_path, source, output, *extra, check=True, name="run"):
    outputs = tmp_path / f"{name}.outputs"
    env = os.environ.copy()
    env["SORTIE_OUTPUT"] = str(outputs)
    proc = run_program("prep_data", "--source", source, "--output", output, "--work-dir", tmp_path / name,
                       "--workers", "4", *extra, env=env, check=check)
    return proc, (read_outputs(outputs) if outputs.exists() else {})


def test_int_prep_data_s3_applies_every_rule(tmp_path, s3, fresh_bucket):
    upload(s3, fresh_bucket, corpus(operatives=10))
    out_bucket = fresh_bucket + "-out"
    s3.create_bucket(Bucket=out_bucket)
    proc, out = run_prep(tmp_path, f"s3://{fresh_bucket}", f"s3://{out_bucket}/datasets/v", "--operatives-limit",
                         "5")
    train, val = rows(tmp_path / "run/train.jsonl"), rows(tmp_path / "run/val.jsonl")
    texts = train + val
    # Operatives: the first 5 files in key order (op-0000..op-0004); processed/ under operatives does not count.
    expected = POLICY_KEEP | {f"KEEP operative {i}" for i in range(5)}
    assert set(texts) == expected
    assert len(texts) == len(expected), "exact duplicates are removed"
    assert not any(t.startswith("SKIP") for t in texts)
    n = len(texts)
    assert out["val_count"] == str(n // 5) == str(len(val))
    assert out["train_count"] == str(n - n // 5)
    assert out["rejected_count"] == str(REJECTED)
    assert out["duplicate_count"] == "2"
    assert "HF_TOKEN" not in proc.stdout
    # Per-group counts, in order: policy first, operatives last.
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[prep] group ")]
    assert [ln.split()[2] for ln in lines] == [
        "corpus_federal/", "econ-theory/", "financial-metrics/", "financial-networks/", "insurance/",
        "government_officials_roster/", "usa/congressional-research/", "operatives/"]
    assert "files=5 rows=6 kept=5 duplicates=1" in lines[-1], "the shared text was first seen in policy"
    assert "files=3 rows=3" in lines[2], "financial-metrics keeps processed/ and failed/"
    # Versioned output prefix with the data set's hash; the uploaded files are the local ones.
    sha = out["dataset_sha256"]
    assert out["dataset_uri"] == f"s3://{out_bucket}/datasets/v/{sha[:16]}"
    got = s3.get_object(Bucket=out_bucket, Key=f"datasets/v/{sha[:16]}/train.jsonl")["Body"].read()
    assert got == (tmp_path / "run/train.jsonl").read_bytes()
    meta = json.loads(s3.get_object(Bucket=out_bucket, Key=f"datasets/v/{sha[:16]}/dataset.json")["Body"].read())
    assert meta["dataset_sha256"] == sha and meta["train_count"] == len(train)
    assert meta["groups"]["econ-theory/"]["skipped"] == {"excluded (behavioral-economics/news)": 1,
                                                        "processed/ folder": 1}
    assert meta["groups"]["operatives/"]["skipped"]["over operatives limit"] == 1


def test_int_prep_data_split_is_deterministic_and_seeded(tmp_path, s3, fresh_bucket):
    upload(s3, fresh_bucket, corpus(operatives=40))
    _, a = run_prep(tmp_path, f"s3://{fresh_bucket}", str(tmp_path / "outa"), name="a")
    _, b = run_prep(tmp_path, f"s3://{fresh_bucket}", str(tmp_path / "outb"), name="b")
    _, c = run_prep(tmp_path, f"s3://{fresh_bucket}", str(tmp_path / "outc"), "--seed", "7", name="c")
    assert a["dataset_sha256"] == b["dataset_sha256"]
    assert (tmp_path / "a/val.jsonl").read_bytes() == (tmp_path / "b/val.jsonl").read_bytes()
    assert a["dataset_sha256"] != c["dataset_sha256"]
    assert a["val_count"] == c["val_count"]
    assert (tmp_path / "outa" / a["dataset_sha256"][:16] / "dataset.json").is_file()


def test_int_prep_data_cap_larger_than_operatives_never_fails(tmp_path, s3, fresh_bucket):
    upload(s3, fresh_bucket, corpus(operatives=3))
    _, out = run_prep(tmp_path, f"s3://{fresh_bucket}", str(tmp_path / "o"), "--operatives-limit", "50000")
    assert int(out["train_count"]) + int(out["val_count"]) == len(POLICY_KEEP) + 3


def test_int_prep_data_fails_when_a_policy_group_has_no_rows(tmp_path, s3, fresh_bucket):
    files = {k: v for k, v in corpus().items() if not k.startswith("insurance/")}
    files["insurance/empty.txt"] = b"   "  # listed, but yields 0 rows
    upload(s3, fresh_bucket, files)
    proc, out = run_prep(tmp_path, f"s3://{fresh_bucket}", str(tmp_path / "o"), check=False)
    assert proc.returncode != 0
    assert "insurance/" in proc.stderr and "0 rows" in proc.stderr
    assert "group insurance/ files=1 rows=0" in proc.stdout
    assert out == {}


def test_int_prep_data_fails_when_a_policy_prefix_is_missing(tmp_path, s3, fresh_bucket):
    upload(s3, fresh_bucket, {k: v for k, v in corpus().items() if not k.startswith("econ-theory/")})
    proc, _ = run_prep(tmp_path, f"s3://{fresh_bucket}", str(tmp_path / "o"), check=False)
    assert proc.returncode != 0 and "econ-theory/" in proc.stderr


def test_e2e_prep_data_local_dir_source_and_output(tmp_path):
    src = tmp_path / "bucket"
    write_dir(src, corpus(operatives=6))
    proc, out = run_prep(tmp_path, str(src), str(tmp_path / "outbucket/datasets"), "--operatives-limit", "4",
                         "--progress-interval", "0.01")
    texts = rows(tmp_path / "run/train.jsonl") + rows(tmp_path / "run/val.jsonl")
    assert set(texts) == POLICY_KEEP | {f"KEEP operative {i}" for i in range(4)}
    dest = Path(out["dataset_uri"])
    assert dest.parent == (tmp_path / "outbucket/datasets").resolve()
    assert json.loads((dest / "dataset.json").read_text())["dataset_sha256"] == out["dataset_sha256"]
    assert "files," in proc.stdout and "/" in proc.stdout  # progress lines "N/M files"


def test_int_sample_corpus_is_the_generated_one():
    """pipeline/sample_corpus (the quickstart's data) is exactly corpus.corpus(), so it covers every rule."""
    root = PIPELINE / "sample_corpus"
    on_disk = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert on_disk == corpus()


@pytest.mark.parametrize("n,val", [(51617, 10323), (10, 2), (4, 0), (0, 0)])
def test_val_split_is_floor_of_a_fifth(n, val):
    from fractions import Fraction

    assert int(Fraction("0.2") * n) == val
    assert n - val == {51617: 41294}.get(n, n - val)


def test_skip_rules_at_every_depth():
    skip = prep_data.skip_reason
    assert skip("corpus_federal/processed/a.jsonl", "corpus_federal/", False, []) == "processed/ folder"
    assert skip("corpus_federal/a/b/failed/a.jsonl", "corpus_federal/", False, []) == "failed/ folder"
    assert skip("corpus_federal/processed.jsonl", "corpus_federal/", False, []) is None
    assert skip("financial-metrics/failed/a.jsonl", "financial-metrics/", True, []) is None
    assert skip("x/behavioral-economics/news/a", "x/", False, ["behavioral-economics/news"]).startswith("excluded")
    assert skip("x/behavioral-economics/newsletter/a", "x/", False, ["behavioral-economics/news"]) is None
