"""A tiny "model mirror" for the local quickstart: what fetch_model leaves in a mirror (files + sortie-manifest.json),
with one real safetensors shard (8-byte little-endian header length, JSON header, raw data: the safetensors format).
Committed under pipeline/sample_model/; test_int_sample_model_is_the_generated_one keeps the two equal.
"""

from __future__ import annotations

import hashlib
import json
import struct

REVISION = "tiny-0001"


def safetensors(tensors: dict[str, list[float]]) -> bytes:
    header, data = {}, b""
    for name, values in tensors.items():
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": [len(values)], "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


def files() -> dict[str, bytes]:
    shard = safetensors({"lm_head.bias": [0.0] * 256})
    out = {
        "config.json": json.dumps({"model_type": "tiny-unigram", "vocab_size": 256}, indent=1).encode(),
        "generation_config.json": b"{}\n",
        "model-00001-of-00001.safetensors": shard,
        "model.safetensors.index.json": json.dumps(
            {"metadata": {"total_size": 1024}, "weight_map": {"lm_head.bias": "model-00001-of-00001.safetensors"}},
            indent=1).encode(),
        "tokenizer_config.json": json.dumps({"tokenizer_class": "ByteLevel"}).encode(),
    }
    manifest = {"model_id": "sortie/tiny-unigram", "revision": REVISION,
                "files": [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                          for n, d in sorted(out.items())]}
    out["sortie-manifest.json"] = json.dumps(manifest, indent=1).encode()
    return out
