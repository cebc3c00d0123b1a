"""Reproduce the shipped tiny model: a character-level Llama warmed up on the arithmetic task.

    .venv/bin/python scripts/make_tiny_model.py --out src/grpo/assets/tiny-arith

The shipped model came from exactly this command (seed 0) in 892 s on the project's 2-core
machine (one thread, the other core busy); its figures are in ``warmup_report.json`` beside
the weights: held-out greedy accuracy 99.0% after stage 1, then 4.7% after stage 2, with
98.7% when the completion is forced to start with ``<think>``.

What it does, and why the warm-up data looks the way it does:

* A character tokenizer (printable ASCII plus ``<think>``/``</think>``/``<answer>``/``</answer>``
  as single tokens) and a randomly initialised Llama (hidden 256, 4 layers, about 4.2M params).
* Supervised warm-up on problems of the ``warmup`` split only, in two stages. Stage 1 teaches
  the skill: every target shows its working (``<think>47+8=55 ...</think><answer>59</answer>``).
  Stage 2 (the last ``--terse-steps`` steps, at the low end of the learning-rate schedule) is a
  fine-tune on data where most targets state the answer alone (``<answer>59</answer>``), as
  terse solutions do in real corpora; only ``--worked-frac`` of them show the working. The
  model keeps both behaviours, and greedy decoding now follows the terse one and gets few
  answers right, although the worked behaviour, which it still produces when sampled, is far
  more accurate. GRPO has something real to find from reward alone: which behaviour pays.
* Weights are stored in bf16 (half the bytes of fp32; the trainer upcasts for training).

The run prints its wall time and the greedy held-out accuracy of the result, both with the
model's own choice of behaviour and with each behaviour forced.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from grpo.data.arithmetic import generate_problems  # noqa: E402
from grpo.data.char_tokenizer import build_char_tokenizer  # noqa: E402


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    vocab = 128  # len(tokenizer) rounded up
    assert len(tokenizer) <= vocab
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(cfg)


def encode_example(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids + EOS): one supervised example as ``collate`` takes it."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    return prompt_ids, target_ids + [tokenizer.eos_token_id]


def encode_examples(tokenizer, problems, worked_frac: float, rng: random.Random):
    out = []
    for p in problems:
        target = p.worked_completion() if rng.random() < worked_frac else p.direct_completion()
        out.append(encode_example(tokenizer, p.prompt, target))
    return out


def collate(batch, pad_id: int):
    width = max(len(p) + len(t) for p, t in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (p, t) in enumerate(batch):
        seq = p + t
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(t)
        attn[i, : len(seq)] = 1
    return ids, labels, attn


@torch.no_grad()
def next_batch(data: list, order: list[int], rng: random.Random, size: int) -> list:
    """The next ``size`` examples of a shuffled pass over ``data``; ``order`` holds the pass's
    remaining indices (refilled and reshuffled when fewer than ``size`` are left)."""
    if len(order) < size:
        order[:] = list(range(len(data)))
        rng.shuffle(order)
    return [data[order.pop()] for _ in range(size)]


def train_step(model, opt, sched, batch, pad_id: int) -> torch.Tensor:
    """One supervised step on ``batch`` (bf16 autocast, grad norm clipped to 1); the loss."""
    ids, labels, attn = collate(batch, pad_id)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss


def greedy_accuracy(model, tokenizer, problems, prefix: str = "", batch_size: int = 256):
    """Greedy accuracy on ``problems``; ``prefix`` forces the start of the completion."""
    model.eval()
    correct = 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        enc = tokenizer(
            [p.prompt + prefix for p in chunk],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.generate(
                **enc, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        texts = tokenizer.batch_decode(
            out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for p, text in zip(chunk, texts, strict=True):
            text = prefix + text
            if "<answer>" in text and "</answer>" in text:
                got = text.split("<answer>")[-1].split("</answer>")[0].strip()
                correct += got == str(p.answer)
    model.train()
    return correct / len(problems)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("src/grpo/assets/tiny-arith"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--examples", type=int, default=40_000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--worked-frac", type=float, default=0.25)
    ap.add_argument("--terse-steps", type=int, default=400)
    ap.add_argument("--eval-problems", type=int, default=500)
    args = ap.parse_args()

    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = random.Random(args.seed)
    tokenizer = build_char_tokenizer()
    model = build_model(tokenizer, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}")

    problems = generate_problems("warmup", args.examples, seed=args.seed)
    worked_data = encode_examples(tokenizer, problems, 1.0, rng)
    mixed_data = encode_examples(tokenizer, problems, args.worked_frac, rng)
    eval_problems = generate_problems("eval", args.eval_problems, seed=args.seed)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    order: list[int] = []
    data = worked_data
    for step in range(args.steps):
        if step == args.steps - args.terse_steps:
            acc1 = greedy_accuracy(model, tokenizer, eval_problems[:100])
            print(f"step {step}: end of stage 1, held-out greedy accuracy {acc1:.1%}")
            data, order = mixed_data, []
            print(f"step {step}: stage 2, {args.worked_frac:.0%} of targets show working")
        batch = next_batch(data, order, rng, args.batch_size)
        loss = train_step(model, opt, sched, batch, tokenizer.pad_token_id)
        if step % 250 == 0 or step == args.steps - 1:
            print(
                f"step {step:5d} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"{time.time() - t0:6.1f}s",
                flush=True,
            )

    train_s = time.time() - t0
    acc = greedy_accuracy(model, tokenizer, eval_problems)
    acc_worked = greedy_accuracy(model, tokenizer, eval_problems, prefix="<think>")
    acc_direct = greedy_accuracy(model, tokenizer, eval_problems, prefix="<answer>")
    report = {
        "seed": args.seed,
        "steps": args.steps,
        "examples": args.examples,
        "worked_frac": args.worked_frac,
        "terse_steps": args.terse_steps,
        "parameters": n_params,
        "train_seconds": round(train_s, 1),
        "heldout_greedy_accuracy": acc,
        "heldout_accuracy_forced_worked": acc_worked,
        "heldout_accuracy_forced_direct": acc_direct,
    }
    print(json.dumps(report, indent=2))

    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "warmup_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved to {args.out} in {time.time() - t0:.0f}s total")


if __name__ == "__main__":
    main()
