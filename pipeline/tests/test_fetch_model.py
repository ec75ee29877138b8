"""fetch_model against a local hub stand-in (standins.HubServer) and the moto endpoint's S3 and SSM."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from conftest import read_outputs, run_program
from standins import HubServer

REPO, REV = "mistralai/Mistral-7B-v0.3", "0d4b76e1efeb5eb6f6b5e757c79870472e04bd3a"
TOKEN = "hf_secret_token_value_1234"


def model_files() -> dict[str, bytes]:
    shard1, shard2 = os.urandom(300_000), os.urandom(200_000)
    index = {"metadata": {"total_size": 500_000},
             "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    return {
        "model-00001-of-00002.safetensors": shard1,
        "model-00002-of-00002.safetensors": shard2,
        "consolidated.safetensors": shard1 + shard2,  # must never be fetched
        "model.safetensors.index.json": json.dumps(index).encode(),
        "config.json": b'{"model_type": "mistral"}',
        "generation_config.json": b"{}",
        "tokenizer.json": b"{}",
        "tokenizer_config.json": b"{}",
        "tokenizer.model": b"spm",
        "special_tokens_map.json": b"{}",
        "README.md": b"# not needed",
        "params.json": b"{}",
    }


WANTED = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
          "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
          "special_tokens_map.json"}


@pytest.fixture
def token_param(aws_endpoint):
    import boto3

    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/sortie/test/hf-token", Value=TOKEN, Type="SecureString", Overwrite=True)
    return "/sortie/test/hf-token"


def fetch(tmp_path, hub, dest, *extra, check=True, name="f"):
    env = os.environ.copy()
    env["SORTIE_OUTPUT"] = str(tmp_path / f"{name}.outputs")
    env.pop("HF_TOKEN", None)
    proc = run_program("fetch_model", "--model-id", REPO, "--revision", REV, "--model-dir", dest, "--hub-url",
                       hub.url if hub else "http://127.0.0.1:9", "--progress-interval", "0", *extra, env=env,
                       check=check)
    out_file = tmp_path / f"{name}.outputs"
    for text in (proc.stdout, proc.stderr, out_file.read_text() if out_file.exists() else ""):
        assert TOKEN not in text
    return proc, (read_outputs(out_file) if out_file.exists() else {})


def test_int_fetch_model_from_hub_with_ssm_token_then_mirror(tmp_path, s3, fresh_bucket, token_param):
    files = model_files()
    mirror = f"s3://{fresh_bucket}/models/{REPO}/{REV}"
    with HubServer(REPO, REV, files, TOKEN) as hub:
        proc, out = fetch(tmp_path, hub, tmp_path / "m1", "--hf-token-param", token_param, "--mirror", mirror)
        assert out["model_source"] == "hub" and out["model_files"] == str(len(WANTED))
        assert {p.name for p in (tmp_path / "m1").iterdir() if not p.name.startswith(".")} == WANTED
        for name in WANTED:
            assert (tmp_path / "m1" / name).read_bytes() == files[name]
        assert not any("consolidated" in path for path, _ in hub.requests)
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=fresh_bucket)["Contents"]}
        assert keys == {f"models/{REPO}/{REV}/{n}" for n in WANTED | {"sortie-manifest.json"}}
        # A second run into the same dir downloads nothing.
        before = len(hub.requests)
        _, out2 = fetch(tmp_path, hub, tmp_path / "m1", "--hf-token-param", token_param, "--mirror", mirror,
                        name="f2")
        assert out2["model_source"] == "mirror"
        assert len(hub.requests) == before
        assert "0 fetched, 9 already complete" in _.stdout
    # The hub is gone: a new instance fetches everything from the S3 mirror, no token needed.
    proc3, out3 = fetch(tmp_path, None, tmp_path / "m2", "--mirror", mirror, name="f3")
    assert out3["model_source"] == "mirror"
    for name in WANTED:
        assert (tmp_path / "m2" / name).read_bytes() == files[name]


def test_int_fetch_model_resumes_a_truncated_download(tmp_path, token_param):
    files = model_files()
    shard = "model-00001-of-00002.safetensors"
    with HubServer(REPO, REV, files, TOKEN) as hub:
        # The connection drops after 100,000 bytes of the first shard: the same run resumes with a Range request.
        hub.cut_after[shard] = 100_000
        proc, out = fetch(tmp_path, hub, tmp_path / "m", "--hf-token-param", token_param)
        assert ("/" + REPO + "/resolve/" + REV + "/" + shard, "bytes=100000-") in hub.requests
        assert "resuming at byte 100000" in proc.stdout
        assert (tmp_path / "m" / shard).read_bytes() == files[shard]
        # A partial file left by a killed process is resumed too.
        other = "model-00002-of-00002.safetensors"
        (tmp_path / "m" / other).unlink()
        (tmp_path / "m" / (other + ".part")).write_bytes(files[other][:1234])
        fetch(tmp_path, hub, tmp_path / "m", "--hf-token-param", token_param, name="f2")
        assert ("/" + REPO + "/resolve/" + REV + "/" + other, "bytes=1234-") in hub.requests
        assert hashlib.sha256((tmp_path / "m" / other).read_bytes()).digest() == hashlib.sha256(files[other]).digest()


def test_int_fetch_model_rejects_a_corrupt_shard_and_a_bad_token(tmp_path, token_param):
    files = model_files()
    with HubServer(REPO, REV, files, TOKEN) as hub:
        shard = "model-00002-of-00002.safetensors"
        (tmp_path / "m").mkdir()
        # A .part with wrong leading bytes: the size matches after resume but the LFS sha256 does not.
        (tmp_path / "m" / (shard + ".part")).write_bytes(b"\0" * 1000)
        proc, _ = fetch(tmp_path, hub, tmp_path / "m", "--hf-token-param", token_param, check=False)
        assert proc.returncode != 0 and "sha256" in proc.stderr
        assert not (tmp_path / "m" / (shard + ".part")).exists()
        proc, _ = fetch(tmp_path, hub, tmp_path / "m", "--hf-token-param", token_param, name="f2")
        assert (tmp_path / "m" / shard).read_bytes() == files[shard]
    import boto3

    boto3.client("ssm").put_parameter(Name="/sortie/test/bad", Value="hf_wrong", Type="SecureString",
                                      Overwrite=True)
    with HubServer(REPO, REV, files, TOKEN) as hub:
        proc, out = fetch(tmp_path, hub, tmp_path / "m3", "--hf-token-param", "/sortie/test/bad", check=False,
                          name="f3")
        assert proc.returncode != 0 and "401" in proc.stderr and out == {}
        assert "hf_wrong" not in proc.stdout + proc.stderr


def test_int_sample_model_is_the_generated_one():
    from conftest import PIPELINE
    from sample_model import files

    root = PIPELINE / "sample_model"
    assert {p.name: p.read_bytes() for p in root.iterdir()} == files()


def test_e2e_fetch_model_from_a_local_mirror_dir_then_preflight_model_checks(tmp_path):
    """The quickstart's fetch: the bundled mirror dir, no hub, no token."""
    from conftest import PIPELINE
    from sample_model import REVISION

    _, out = fetch(tmp_path, None, tmp_path / "model", "--mirror", PIPELINE / "sample_model", "--revision", REVISION)
    assert out["model_source"] == "mirror" and out["model_files"] == "5"
    assert (tmp_path / "model/model-00001-of-00001.safetensors").stat().st_size > 1024
    proc, _ = fetch(tmp_path, None, tmp_path / "model", "--mirror", PIPELINE / "sample_model", "--revision", "other",
                    check=False, name="f2")
    assert proc.returncode != 0 and "holds revision tiny-0001" in proc.stderr
