"""Hugging Face transformers: a tiny Llama fine-tuned with its loss on losskit's fused linear
cross-entropy, against the model's own loss.

    pip install 'losskit[transformers]'        # matplotlib too, for --plot
    python examples/08_transformers.py [--plot DIR]

Everything is built here, nothing is downloaded: a byte-level tokenizer (a token is a byte, so
the vocabulary is 256), a Llama from a config with random weights, and the text of the Zen of
Python, which ships inside Python as ``this.s`` (rot13). The same model, batches and seed are
trained twice, with the model's own loss and with ``losskit.integrations.transformers.patch``,
and the per-step losses are printed side by side.

Then one training step (forward, backward, an SGD step) at a vocabulary of 32000, where the
logits are the largest tensor of the step: its time in this process (median of interleaved
steps) and its peak resident memory in a fresh process per variant (``losskit bench``'s
memory helper: ``VmHWM`` from ``/proc/self/status`` above the size once the model and batch
exist). ``--plot DIR`` writes ``DIR/transformers_patch.png``: both loss curves and the memory.
It takes about 30 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import os
import statistics
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

try:
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError:
    sys.exit("this example needs transformers: pip install 'losskit[transformers]'")

from losskit.bench import _common as C
from losskit.integrations.transformers import patch, verify

STEPS, BATCH, LENGTH = 30, 8, 64  # the fine-tuning: steps, sequences per batch, bytes each
BIG = {"vocab": 32000, "batch": 2, "length": 512}  # the step measured for time and memory
MIB = float(1 << 20)


def zen() -> bytes:
    """The Zen of Python as bytes; importing ``this`` prints it, so its output is swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13").encode()


def tiny_llama(vocab: int, seed: int = 0) -> LlamaForCausalLM:
    """A two-layer Llama with random weights (``seed``), untied head, no dropout."""
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def batches(data: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """``STEPS`` batches of ``BATCH`` random windows of ``LENGTH`` bytes of ``data``."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - LENGTH, (STEPS, BATCH), generator=gen)
    return [torch.stack([data[s : s + LENGTH] for s in row.tolist()]) for row in starts]


def fine_tune(model: LlamaForCausalLM, data: list[torch.Tensor]) -> list[float]:
    """Train on ``data``; the labels are the inputs (the model shifts them); the losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for ids in data:
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def make_case(name: str, params: dict) -> C.Case:
    """One training step of the big model, ``"patched"`` or ``"unpatched"`` (the memory child
    builds it by this name; the main process times it)."""
    model = tiny_llama(params["vocab"])
    if name == "patched":
        patch(model)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, params["vocab"], (params["batch"], params["length"]), generator=gen)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()

    return C.Case(name, step, lambda: optimizer.zero_grad(set_to_none=True))


def measure_memory(pool: ThreadPoolExecutor) -> dict[str, Future]:
    """Start the memory measurement of the big step: a fresh process per variant, side by side
    (each process's peak is its own); each future holds (figures or None, an error or '')."""
    here = str(Path(__file__).resolve().parent)  # the child imports this file by its name
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    module = Path(__file__).stem
    return {
        name: pool.submit(C.user_peak_bytes_in_subprocess, module, name, BIG, steps=3)
        for name in ("unpatched", "patched")
    }


def plot(directory: Path, losses: dict[str, list[float]], memory: dict[str, float]) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("--plot: skipped, needs matplotlib (pip install matplotlib)")
        return
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=(2, 1))
    steps = range(1, STEPS + 1)
    left.plot(steps, losses["unpatched"], lw=3, alpha=0.5, label="unpatched (the model's loss)")
    left.plot(steps, losses["patched"], "k--", lw=1, label="patched (losskit, logits never built)")
    left.set(xlabel="step", ylabel="training loss", title="tiny Llama on the Zen of Python")
    left.legend()
    left.grid(alpha=0.3)
    if memory:
        bars = right.bar(list(memory), list(memory.values()), color=["#c44e52", "#4c72b0"])
        right.bar_label(bars, fmt="%.0f MiB")
    shape = f"{BIG['batch']} x {BIG['length']} tokens, V={BIG['vocab']}"
    right.set(ylabel="peak MiB above model + batch", title=f"one training step\n{shape}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "transformers_patch.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write a PNG of the curves")
    parser.add_argument(
        "--quick", action="store_true",
        help="the fine-tuning only, without the big step's time and memory (for the tests)",
    )  # fmt: skip
    args = parser.parse_args()

    # the fresh processes of the memory measurement run while this one fine-tunes, all three on
    # one thread each (a model this small trains fastest on one; a process's peak is its own)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with ThreadPoolExecutor(2) as pool:
        memory = {} if args.quick else measure_memory(pool)

        data = torch.tensor(list(zen()))
        print(f"text: the Zen of Python, {len(data)} bytes; byte-level vocabulary of 256")
        print(verify(tiny_llama(256)))
        losses = {}
        for name in ("unpatched", "patched"):
            model = tiny_llama(256)  # the same weights both times
            if name == "patched":
                patch(model)
            losses[name] = fine_tune(model, batches(data))
        with torch.no_grad():  # without labels the patched model runs its own forward
            logits = model(input_ids=data[None, :LENGTH]).logits
        print(f"patched model called without labels: its own forward, logits {tuple(logits.shape)}")

        print(f"\n{'step':>4}  {'unpatched':>10}  {'patched':>10}  {'|difference|':>12}")
        pairs = list(zip(losses["unpatched"], losses["patched"], strict=True))
        for i, (a, b) in enumerate(pairs):
            print(f"{i + 1:>4}  {a:>10.6f}  {b:>10.6f}  {abs(a - b):>12.2e}")
        worst = max(abs(a - b) for a, b in pairs)
        print(f"max |difference| over {STEPS} steps: {worst:.2e}")

    torch.set_num_threads(threads)  # the step time: this process alone, on every thread
    assert worst < 1e-3, pairs
    assert losses["patched"][-1] < losses["patched"][0] - 1.0
    if args.quick:
        if args.plot is not None:
            plot(args.plot, losses, {})
        return
    print(
        f"\none training step (forward, backward, SGD step): batch {BIG['batch']} x "
        f"{BIG['length']} tokens, vocabulary {BIG['vocab']}, float32, {threads} thread(s)\n"
        "  time: median of 3 steps, the variants interleaved, in this process\n"
        "  memory: peak resident set above the size once the model and batch exist, in a fresh\n"
        "  process per variant: over its first 3 steps (peak), and of one more step (warm)\n"
        f"  {'':<9}  {'step time':>9}  {'peak':>8}  {'warm':>8}"
    )
    cases = [make_case(name, BIG) for name in ("unpatched", "patched")]
    times = C.time_cases(cases, device="cpu", repeats=3, warmup=1)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    peaks = {}
    for name in ("unpatched", "patched"):
        figures, error = memory[name].result()
        if figures is None:
            print(f"  {name:<9}  {ms[name]:6.0f} ms  (memory: {error})")
            continue
        peaks[name] = figures["peak"] / MIB
        warm = figures["warm"] / MIB
        print(f"  {name:<9}  {ms[name]:6.0f} ms  {peaks[name]:4.0f} MiB  {warm:4.0f} MiB")
    ratios = f"patched / unpatched: {ms['patched'] / ms['unpatched']:.2f}x the step time"
    if len(peaks) == 2:
        ratios += f", {peaks['patched'] / peaks['unpatched']:.2f}x the peak memory"
    print(ratios)

    if args.plot is not None:
        plot(args.plot, losses, peaks)
    assert len(peaks) < 2 or peaks["patched"] < peaks["unpatched"]


if __name__ == "__main__":
    main()
