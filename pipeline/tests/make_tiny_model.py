"""Write a tiny, randomly initialised Mistral model and a tokenizer trained on the fly (no download).

Run with the training venv's python: make_tiny_model.py OUT_DIR CORPUS_JSONL [CORPUS_JSONL...]
MistralConfig: hidden 64, intermediate 128, 2 layers, 4 heads, 2 KV heads (head_dim 16): Mistral's layout
(grouped-query attention, SwiGLU MLP) at a size that trains on CPU in seconds.
"""

import json
import sys

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast


def main(out: str, *corpora: str) -> None:
    texts = []
    for path in corpora:
        with open(path, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials, vocab_size=512))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)
    cfg = MistralConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    MistralForCausalLM(cfg).save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
