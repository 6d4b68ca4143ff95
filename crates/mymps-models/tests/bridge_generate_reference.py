"""Reference outputs for crates/mymps-models/tests/bridge_generate.rs.

Makes, in the folder given as the first argument, a tiny random causal LM
of an architecture the native engine does not cover (`gpt_neox`, with a
tiny byte-level BPE tokenizer trained here: no download) and another
without a tokenizer (`opt`), saved with `save_pretrained`; and
transformers' own `generate` output for them: greedy ids for a text prompt
and for a left-padded batch of 3 with a repetition penalty, and seeded
sampling ids (`torch.manual_seed(seed)` just before `generate`, as the
bridge does). Writes what the Rust test compares to `reference.json`.
"""

import json
import os
import sys

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "naïve café, déjà vu, piñata; 東京タワー — 🦀 rust 🐍 python",
    "Mary had a little lamb, its fleece was white as snow.",
] * 20


def tokenizer(folder):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>"
    )
    fast.save_pretrained(folder)
    return tf.AutoTokenizer.from_pretrained(folder)


def greedy(model, ids, mask, pad, **kw):
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             pad_token_id=pad, **kw)
    return out[:, ids.shape[1]:].tolist()


ref = {}

# gpt_neox with a tokenizer.
neox = os.path.join(OUT, "neox")
tok = tokenizer(neox)
EOS, PAD, VOCAB = tok.eos_token_id, tok.pad_token_id, len(tok)
torch.manual_seed(0)
config = tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=48,
                          max_position_embeddings=64, eos_token_id=EOS, bos_token_id=EOS,
                          pad_token_id=PAD)
model = tf.GPTNeoXForCausalLM(config).eval()
model.save_pretrained(neox)
prompt = "The quick brown fox"
enc = tok(prompt, return_tensors="pt")
text_ids = greedy(model, enc["input_ids"], enc["attention_mask"], PAD, max_new_tokens=12)[0]


def cache_bytes(model, ids, mask, **kw):
    """The bytes of the cache transformers' generate leaves."""
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             return_dict_in_generate=True, **kw)
    cache = out.get("cache") if out.get("cache") is not None else out.past_key_values
    return sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (layer.keys, layer.values))


ref["neox"] = {
    "cache_bytes": cache_bytes(model, enc["input_ids"], enc["attention_mask"],
                               max_new_tokens=12, pad_token_id=PAD, eos_token_id=[]),
    "eos": EOS,
    "pad": PAD,
    "vocab": VOCAB,
    "prompt": prompt,
    "prompt_ids": enc["input_ids"][0].tolist(),
    "greedy_text_ids": text_ids,
    "greedy_text": tok.decode(text_ids, skip_special_tokens=True),
}
rows = [[5, 77, 140, 9, 33, 201, 18], [250, 3, 64], [12, 99, 180, 7, 41]]
width = max(map(len, rows))
ids = torch.full((3, width), PAD, dtype=torch.long)
mask = torch.zeros((3, width), dtype=torch.long)
for i, r in enumerate(rows):
    ids[i, width - len(r):] = torch.tensor(r)
    mask[i, width - len(r):] = 1
ref["neox"]["batch"] = rows
ref["neox"]["batch_penalty_ids"] = greedy(model, ids, mask, PAD, max_new_tokens=10,
                                          repetition_penalty=1.3, eos_token_id=EOS)
seed = 7
torch.manual_seed(seed)
with torch.no_grad():
    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         do_sample=True, temperature=0.9, top_k=40, top_p=1.0,
                         max_new_tokens=10, pad_token_id=PAD, eos_token_id=[])
ref["neox"]["seed"] = seed
ref["neox"]["sampled_ids"] = out[0, enc["input_ids"].shape[1]:].tolist()

# opt without a tokenizer.
opt = os.path.join(OUT, "opt")
torch.manual_seed(1)
config = tf.OPTConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      ffn_dim=37, max_position_embeddings=64, word_embed_proj_dim=32,
                      pad_token_id=1, eos_token_id=2, bos_token_id=2)
model = tf.OPTForCausalLM(config).eval()
model.save_pretrained(opt)
ids = torch.tensor([[2, 45, 67, 12, 88]])
ref["opt"] = {
    "prompt_ids": ids[0].tolist(),
    "greedy_ids": greedy(model, ids, torch.ones_like(ids), 1, max_new_tokens=15,
                         eos_token_id=[])[0],
}

with open(os.path.join(OUT, "reference.json"), "w") as f:
    json.dump(ref, f, indent=1)
