"""Reference outputs for crates/mymps-models/tests/generate.rs.

Makes, in the folder given as the first argument: a tiny byte-level BPE
tokenizer trained here (no download) and what Python's `tokenizers` makes
of some texts; tiny random GPT-2 and Llama causal LMs (`save_pretrained`,
the tokenizer beside them); and transformers' own `generate` output ids
for greedy cases (one prompt, a left-padded batch of 3, a repetition
penalty, a stop id). Writes everything the Rust test compares to
`reference.json`.
"""

import json
import os
import sys

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "naïve café, déjà vu, piñata; 東京タワー and 北京 — 🦀 rust 🐍 python",
    "def generate(model, prompt, max_new_tokens=20): return model(prompt)",
    "Mary had a little lamb, its fleece was white as snow.",
] * 20

TEXTS = [
    "The quick brown fox",
    "déjà vu at the café 🦀",
    "東京タワー",
    "  leading spaces and\ttabs\nnewlines  ",
    "unknown words: zyxxyq qqq",
    "<|endoftext|> special in text",
    "",
]


def tokenizer():
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
    # A BOS added by the post-processor, as Llama's tokenizers do.
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B",
        special_tokens=[("<|endoftext|>", 0)])
    return tok


def save_tokenizer(tok, folder):
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"pad_token": "<pad>", "eos_token": "<|endoftext|>"}, f)


tok = tokenizer()
VOCAB = tok.get_vocab_size()
EOS, PAD = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<pad>")
tok_dir = os.path.join(OUT, "tokenizer")
os.makedirs(tok_dir, exist_ok=True)
save_tokenizer(tok, tok_dir)
tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
tokenizer_cases = []
for text in TEXTS:
    for special in (True, False):
        ids = tok.encode(text, add_special_tokens=special).ids
        tokenizer_cases.append({
            "text": text, "add_special_tokens": special, "ids": ids,
            "decoded": tok.decode(ids, skip_special_tokens=True),
            "decoded_special": tok.decode(ids, skip_special_tokens=False),
        })

MODELS = {
    "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel, dict(
        n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2)),
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64)),
}

PROMPTS = [
    [5, 17, 42, 99, 8, 31, 77],
    [12, 250, 3],
    [61, 62, 63, 64, 65],
]


def generate(model, prompts, **kw):
    """transformers' generate on `prompts` left-padded with PAD; the new ids
    of each row, up to and including its first stop id."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    stops = kw.get("eos_token_id", [EOS])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=PAD, **kw)
    rows = []
    for row in out[:, width:].tolist():
        for i, t in enumerate(row):
            if t in stops:
                row = row[:i + 1]
                break
        rows.append(row)
    return rows


cases = []
for name, (cfg_cls, model_cls, kw) in MODELS.items():
    torch.manual_seed(0)
    config = cfg_cls(vocab_size=VOCAB, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, **kw)
    model = model_cls(config).eval()
    folder = os.path.join(OUT, name)
    model.save_pretrained(folder)
    save_tokenizer(tok, folder)
    greedy = dict(do_sample=False, max_new_tokens=16)
    first = generate(model, PROMPTS[:1], **greedy)[0]
    for case, prompts, opts in [
        ("one prompt", PROMPTS[:1], greedy),
        ("left-padded batch of 3", PROMPTS, greedy),
        ("repetition penalty", PROMPTS, dict(greedy, repetition_penalty=1.7)),
        ("max_new_tokens 1", PROMPTS, dict(greedy, max_new_tokens=1)),
        # The 5th token of the first greedy run ends that row at 5 tokens
        # (and maybe others).
        ("stop id", PROMPTS, dict(greedy, eos_token_id=[EOS, first[4]])),
    ]:
        cases.append({
            "model": name, "case": case, "prompts": prompts,
            "max_new_tokens": opts["max_new_tokens"],
            "repetition_penalty": opts.get("repetition_penalty"),
            "stop_ids": [t for t in opts.get("eos_token_id", []) if t != EOS],
            "ids": generate(model, prompts, **opts),
        })

with open(os.path.join(OUT, "reference.json"), "w") as f:
    json.dump({
        "transformers": tf.__version__, "vocab": VOCAB, "eos": EOS, "pad": PAD,
        "tokenizer": tokenizer_cases, "generate": cases,
    }, f, indent=1)
print(f"wrote {len(cases)} generate cases, {len(tokenizer_cases)} tokenizer cases to {OUT}")
