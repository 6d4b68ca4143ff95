"""transformers' side of `mymps-bench-generate`: makes the random models
(save_pretrained into OUT), then times transformers' own eager `generate`
on them in this process — time to first token (a streamer's clock at the
first new token) and tokens per second — and writes OUT/transformers.json
with the prompts, so that the Rust side runs exactly the same requests.

usage: python generate.py OUT --device cpu --dtype float32 [--quick]
"""

import argparse
import json
import os
import statistics
import time

import torch
import transformers as tf

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--device", default="cpu")
p.add_argument("--dtype", default="float32")
p.add_argument("--quick", action="store_true")
args = p.parse_args()
DTYPE = getattr(torch, args.dtype)
DEV = torch.device(args.device)


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


# name: (config, prompt tokens, new tokens, batches). No EOS: every run
# makes exactly its new tokens.
COMMON = dict(eos_token_id=None, bos_token_id=None, pad_token_id=0)
MODELS = {
    "gpt2-tiny": (tf.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                                **COMMON), 32, 64, [1, 4]),
    "llama-tiny": (tf.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, **COMMON), 32, 64, [1, 4]),
    "gpt2-124m": (tf.GPT2Config(**COMMON), 32, 16, [1, 4]),
    "llama-100m": (tf.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                                  num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=4,
                                  max_position_embeddings=2048, **COMMON), 32, 16, [1, 4]),
}
if args.quick:
    MODELS = {k: (c, 8, 8, [1, 2]) for k, (c, _, _, _) in MODELS.items() if k.endswith("tiny")}
REPS = 1 if args.quick else 2


class Clock:
    """A streamer that notes when the first new token arrives (`put` gets
    the prompt first, then each step's tokens)."""

    def __init__(self):
        self.calls = 0
        self.first = None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            sync()
            self.first = time.perf_counter()

    def end(self):
        pass


def run(model, ids, new):
    mask = torch.ones_like(ids)
    clock = Clock()
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                             streamer=clock)
    sync()
    total = time.perf_counter() - t0
    assert out.shape[1] == ids.shape[1] + new, out.shape
    return clock.first - t0, total


results = {"transformers": tf.__version__, "torch": torch.__version__, "device": args.device,
           "dtype": args.dtype, "threads": torch.get_num_threads(), "models": {}}
for name, (config, prompt, new, batches) in MODELS.items():
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config)
    folder = os.path.join(args.out, name)
    model.save_pretrained(folder)
    model = tf.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager",
                                                    dtype=DTYPE).to(DEV).eval()
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(1)
    entry = {"path": folder, "parameters": params, "prompt_tokens": prompt, "new_tokens": new,
             "runs": []}
    for batch in batches:
        ids = torch.randint(1, config.vocab_size, (batch, prompt), generator=gen)
        run(model, ids.to(DEV), min(new, 8))  # warm-up
        times = [run(model, ids.to(DEV), new) for _ in range(REPS)]
        ttft = statistics.median(t for t, _ in times)
        total = statistics.median(t for _, t in times)
        entry["runs"].append({"batch": batch, "prompts": ids.tolist(), "ttft_s": ttft, "total_s": total,
                              "tokens_per_s": batch * new / total})
        print(f"transformers {name} batch {batch}: ttft {ttft * 1e3:.1f} ms, "
              f"{batch * new / total:.1f} tokens/s", flush=True)
    results["models"][name] = entry
    del model

with open(os.path.join(args.out, "transformers.json"), "w") as f:
    json.dump(results, f)
