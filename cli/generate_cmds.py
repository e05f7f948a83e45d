"""`nnlang generate`: text from a trained sequence model, a thin wrapper over `Net.generate`
(nnlang/runtime/generate.py) after restoring the checkpoint like `predict` does.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer

from nnlang.frontend.generate_config import BASE
from nnlang_cli.app import (INTERRUPTED, PATH, app, err_console, finite_float, one_process,
                            parse_overrides, reporting, terminated)
from nnlang_cli.train_cmds import BACKEND_HELP, CKPT_HELP, DATA_DIR_HELP


# NOTE: a panel of their own: in the main one rich cut "--no-repeat-ngram-size" to fit 80
# columns (its name column is shared with every other flag's)
HF_PANEL = "Repetition, length and sequences per prompt (Hugging Face's)"


def _default(key: str) -> str:
    """A flag's default as generation takes it: the generate section's value, else BASE's."""
    return f"(default: the generate section's {key}, else {BASE[key]:g})"


@app.command()
def generate(
    file: Path = typer.Argument(..., help="The .nn file the checkpoint was trained from."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=CKPT_HELP, **PATH),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="Text to continue "
                                               "(for an encoder-decoder: the source); "
                                               "repeatable: all prompts run in one batch."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="A UTF-8 file with "
                                               "one prompt per line.", **PATH),
    max_new: Optional[int] = typer.Option(None, "--max-new", help="Most tokens to add "
                                          f"{_default('max_new')}."),
    temperature: Optional[float] = typer.Option(None, "--temperature", callback=finite_float,
                                                help="Sample with this temperature (> 0)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample among the k likeliest."),
    top_p: Optional[float] = typer.Option(None, "--top-p", callback=finite_float,
                                          help="Sample from the smallest set of tokens with "
                                               "this much probability (nucleus)."),
    greedy: bool = typer.Option(False, "--greedy", help="The likeliest token every step "
                                "(ignores the generate section's sampling settings)."),
    beam: Optional[int] = typer.Option(None, "--beam", help="Beam search with this width."),
    length_penalty: Optional[float] = typer.Option(None, "--length-penalty",
                                                   callback=finite_float, help="Beam scores "
                                                   "are divided by length ** this "
                                                   f"{_default('length_penalty')}."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="The text of the token that "
                                             "ends a sequence; escapes like \\n work, and "
                                             "digits are text (9 is the character '9')."),
    stop_id: Optional[list[int]] = typer.Option(None, "--stop-id", min=0, help="The id of the "
                                                "token that ends a sequence (instead of "
                                                "--stop)."),
    stop_string: Optional[list[str]] = typer.Option(None, "--stop-string", help="Text that "
                                                    "ends a sequence once generated, over "
                                                    "several tokens if need be (HF's "
                                                    "stop_strings); repeatable; the text is "
                                                    "kept through it; escapes like \\n work."),
    seed: Optional[int] = typer.Option(None, "--seed",
                                       help=f"Seed of the sampling {_default('seed')}."),
    repetition_penalty: Optional[float] = typer.Option(
        None, "--repetition-penalty", callback=finite_float, rich_help_panel=HF_PANEL,
        help="Scores of the tokens already in the sequence (prompt included) are divided by "
        "this when positive, multiplied when negative (HF's CTRL rule) "
        f"{_default('repetition_penalty')}."),
    no_repeat_ngram_size: Optional[int] = typer.Option(
        None, "--no-repeat-ngram-size", rich_help_panel=HF_PANEL,
        help="No n-gram of this size occurs twice in a sequence "
        f"{_default('no_repeat_ngram_size')}."),
    min_new_tokens: Optional[int] = typer.Option(
        None, "--min-new-tokens", rich_help_panel=HF_PANEL,
        help="The stop token cannot end a sequence before this many new tokens "
        f"{_default('min_new_tokens')}."),
    num_return_sequences: Optional[int] = typer.Option(
        None, "--num-return-sequences", rich_help_panel=HF_PANEL,
        help="Sequences per prompt: independent samples, or the best beams (at most --beam) "
        f"{_default('num_return_sequences')}."),
    sets: Optional[list[str]] = typer.Option(
        None, "--set", help="name=value: a model hyper-parameter over the run's that changes "
                            "no weight's shape, e.g. a recurrent model's sequence length for "
                            "longer text; repeatable."),
    backend: str = typer.Option("numba", "--backend", help=BACKEND_HELP),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP, **PATH),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per prompt."),
    evaluate: bool = typer.Option(False, "--eval", help="Encoder-decoder: decode the data "
                                  "set's held-out sources (its test split) instead of prompts "
                                  "and report exact match against their targets."),
    data: Optional[str] = typer.Option(None, "--data", help="With --eval: this data set "
                                       "instead of the train section's."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="With --eval: only "
                                        "the first N held-out examples."),
):
    """Continue text prompts with a trained model: greedy (default without sampling settings),
    temperature / top-k / top-p sampling, or beam search; --eval scores an encoder-decoder on
    held-out data. See docs/generation.md."""
    from nnlang.errors import NNError
    from nnlang.runtime.generate import Interrupted, decode, prepared
    from nnlang.train.inference import restore
    out = one_process("generate")
    if out is None:
        return
    cut = False
    settings = dict(max_new=max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                    beam=beam, length_penalty=length_penalty, seed=seed,
                    greedy=greedy or None, stop_strings=stop_string,
                    repetition_penalty=repetition_penalty,
                    no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens,
                    num_return_sequences=num_return_sequences)
    with reporting():
        _check_mode(evaluate, prompt, prompt_file, data, limit)
        if evaluate and stop_string:
            # NOTE: --eval compares ids through the stop token with the targets'
            raise NNError("--stop-string does not apply with --eval (held-out decoding "
                          "compares ids through the stop token)", hint="drop --stop-string")
        prompts = None if evaluate else _prompts(prompt, prompt_file)
        # NOTE: text and ids have a flag each: `--stop 9` read as id 9 ended a sequence at
        # another token than the character '9' it ends at in net.generate(stop="9")
        stops = [*(stop or ()), *(stop_id or ())]
        if len(stops) > 1:   # NOTE: lists, so a second stop token is not dropped silently
            flags = " and ".join(f for f, v in (("--stop", stop), ("--stop-id", stop_id)) if v)
            raise NNError(f"{flags} {'are' if stop and stop_id else 'is'} given {len(stops)} "
                          "times; a sequence ends at one stop token",
                          hint="give --stop TEXT or --stop-id N once")
        stop = stops[0] if stops else None
        net, ckpt, cfg = restore(str(file), checkpoint, backend, None,
                                 None if as_json else out, optimizer=False,
                                 sets=parse_overrides(sets))
        # NOTE: the checkpoint's own tokenizer (restore keeps it): the data set need not be
        # loaded to encode
        tok = net.tokenizer
        if tok is None and "data" not in ckpt.meta and not as_json:
            # NOTE: a save of a library loop: the tokenizer it used is not the net's to know
            out.print(f"note: {ckpt.path} was saved by nnlang.save without its data set or "
                      "tokenizer: text is encoded with the tokenizer of the train section's "
                      "data set (set net.tokenizer, or pass data= to nnlang.save, to record "
                      "the one the loop used)", markup=False, highlight=False)
        if evaluate:
            report = _held_out(net, cfg, file, data, data_dir, limit, tok, stop,
                               {**settings, "data_dir": data_dir})
        else:
            prompts, opts = prepared(net, prompts, {**settings, "stop": stop})
            live = None if as_json else _streamer(out, net, prompts, tok, opts, data_dir)
            try:
                with live or contextlib.nullcontext():
                    result = decode(net, prompts, opts, tok, data_dir, live)
            except Interrupted as stopped:
                # NOTE: Ctrl-C while decoding: what each prompt had is printed (`stopped`
                # "interrupted"), then exit 130; it was dropped with only "interrupted"
                result, cut = stopped.generation, True
    if evaluate:
        return _print_held_out(out, report, as_json)
    _print_samples(out, net, result, as_json)
    if cut:
        word, code = terminated() or ("interrupted", INTERRUPTED)
        (err_console() if as_json else out).print(
            f"{word}: the texts above end where decoding stopped", markup=False,
            highlight=False)
        raise typer.Exit(code)


def _streamer(out, net, prompts, tok, opts, data_dir):
    """A live view of the text as it is generated (HF's TextStreamer) when the output is a
    terminal and there is one sequence to follow (one prompt, no beam search, one sequence);
    else None."""
    from nnlang.runtime.generate import streamable, tokenizer_of
    from nnlang.train.progress import live
    # NOTE: a real terminal, as for training's bar: FORCE_COLOR makes rich take a file or pipe
    # for one, and `nnlang generate > out.txt` got each frame with its escape codes
    if not live(out) or not streamable(len(prompts), opts):
        return None
    joint = " -> " if net.program.generate.source else ""
    return _LiveText(out, tok or tokenizer_of(net, data_dir), prompts[0] + joint)


class _LiveText:
    """HF's TextStreamer on a terminal: the prompt and the text so far, redrawn at each token
    (its last lines, as many as the terminal shows) and erased when decoding ends, so that the
    result is then printed as it is without a terminal."""

    def __init__(self, out, tok, head: str):
        from rich.live import Live
        self.out, self.tok, self.head, self.ids = out, tok, head, []
        self.prompt = True   # NOTE: the first put is the prompt's ids, shown as `head` already
        self.live = Live(console=out, auto_refresh=False, transient=True)

    def __enter__(self):
        self.live.start()
        return self

    def __exit__(self, *exc):
        self.live.stop()

    def put(self, ids) -> None:
        from rich.text import Text
        if self.prompt:   # HF's TextStreamer(skip_prompt=True)
            self.prompt = False
            return
        self.ids += [int(i) for i in ids]
        text = Text(self.head + self.tok.decode(self.ids))
        # NOTE: only the tail: a live view taller than the terminal cannot be erased
        lines = text.wrap(self.out, max(self.out.width, 1))
        tail = Text("\n").join(lines[-max(self.out.height - 1, 1):])
        self.live.update(tail, refresh=True)

    def end(self) -> None:
        self.live.stop()


def _print_samples(out, net, result, as_json: bool) -> None:
    many = result.options.get("num_return_sequences", 1)
    groups = result.grouped
    if as_json:
        for group in groups:
            rows = [{"prompt": s.prompt, "text": s.text, "ids": s.ids, "stopped": s.stopped,
                     "score": s.score, "mode": result.mode} for s in group]
            # NOTE: one line per prompt: its object, or the list of its n sequences
            typer.echo(json.dumps(rows if many > 1 else rows[0]))
        return
    if result.mode != "incremental":
        out.print(f"note: recomputing the prefix for every token ({result.reason})",
                  markup=False)
    # an encoder-decoder's prompt is its source, not the start of its output
    joint = " -> " if net.program.generate.source else ""
    for group in groups:
        for k, s in enumerate(group):
            of = f", {k + 1} of {many}" if many > 1 else ""
            out.print(f"--- {_strategy(result.options)} ({s.stopped}{of})", markup=False)
            out.print(s.prompt + joint + s.text, markup=False)


def _check_mode(evaluate, prompt, prompt_file, data, limit) -> None:
    from nnlang.errors import NNError
    if evaluate and (prompt or prompt_file):
        raise NNError("--eval decodes the data set's held-out sources, so it takes no prompts",
                      hint="drop --prompt/--prompt-file, or drop --eval to continue them")
    for flag, value in (("--data", data), ("--limit", limit)):
        if value is not None and not evaluate:
            raise NNError(f"{flag} only applies with --eval (decoding held-out data)",
                          hint=f"add --eval, or drop {flag}")


def _held_out(net, cfg, file, data, data_dir, limit, tok, stop, options) -> dict:
    """Exact match of decoding the test split's sources (the validation carve if the data set
    has no test split) against the model's target with the token stream's length."""
    from nnlang.errors import NNError
    from nnlang.runtime.generate import held_out
    from nnlang.train import feeds
    from nnlang.train.inference import held_out_arrays
    spec = net.program.generate
    if spec is None or spec.source is None:
        return held_out(net, None, None, tok, **options)  # NOTE: raises the located error
    ds, split, arrays = held_out_arrays(net, cfg, data, data_dir, file.parent)
    split = {"val": "validation"}.get(split, split)
    length = net.user.node(net.user.inputs[spec.tokens]).shape[1]
    targets = [k for k in feeds.input_roles(net.user)[1]
               if tuple(net.user.node(net.user.inputs[k]).shape[1:]) == (length,)]
    if not targets:
        raise NNError(f"model '{net.program.model}' has no target input of the token stream's "
                      f"length ({length}) to compare decoded sequences with",
                      spec.spans.get("tokens"), "declare the target the loss reads, e.g. "
                      f"`input target: int32[batch, {length}]`")
    n = len(arrays[spec.source]) if limit is None else min(limit, len(arrays[spec.source]))
    report = held_out(net, arrays[spec.source][:n], arrays[targets[0]][:n], tok, stop=stop,
                      **options)
    return {**report, "data": ds.name, "split": split}


def _print_held_out(out, r: dict, as_json: bool) -> None:
    strategy = _strategy(r["options"])
    if as_json:
        typer.echo(json.dumps({"data": r["data"], "split": r["split"], "strategy": strategy,
                               "exact_match": r["exact_match"], "hits": r["hits"], "n": r["n"],
                               "seconds": round(r["seconds"], 3), "mode": r["mode"]}))
        return
    if r["mode"] != "incremental":
        out.print(f"note: recomputing the prefix for every token ({r['reason']})", markup=False)
    out.print(f"{strategy} exact match on {r['data']} {r['split']}: {r['exact_match']:.4f} "
              f"({r['hits']:,}/{r['n']:,}) in {r['seconds']:.1f}s", markup=False)
    wrong = [i for i, hit in enumerate(r["hit"]) if not hit]
    for i in wrong[:5]:
        s = r["samples"][i]
        out.print(f"  {s.prompt!r} -> {s.text!r}, want {r['targets'][i]!r}", markup=False)
    if len(wrong) > 5:
        out.print(f"  ... and {len(wrong) - 5:,} more", markup=False)


MAX_PROMPT_FILE_BYTES = 64 << 20


def _prompts(given, path) -> list[str]:
    from nnlang.errors import NNError
    from nnlang.frontend.source import decode
    prompts = list(given or [])
    if path is not None:
        try:
            with path.open("rb") as f:
                data = f.read(MAX_PROMPT_FILE_BYTES + 1)
            if len(data) > MAX_PROMPT_FILE_BYTES:
                # NOTE: /dev/zero or a data file given by mistake read on until memory ran out
                raise NNError(f"--prompt-file {path} is larger than "
                              f"{MAX_PROMPT_FILE_BYTES / 2**20:g} MiB; it holds prompts, one a "
                              "line", hint="is this the right file?")
            # NOTE: a byte-order mark is no text; lines end at "\n" (and "\r\n") only:
            # splitlines() also cut at a form feed, U+0085 and U+2028, which made two prompts of
            # one line where --prompt with the same text is an error naming the character
            lines = [line.removesuffix("\r") for line in
                     decode(data, str(path), "a prompt file").split("\n")]
        except OSError as err:
            raise NNError(f"--prompt-file {path}: cannot read it ({err})") from None
        prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise NNError("no prompt given", hint="pass --prompt TEXT (repeatable) or "
                      "--prompt-file FILE")
    return prompts


def _strategy(o: dict) -> str:
    # the logits processors that are on, as `name value`
    extra = "".join(f", {k.replace('_', ' ')} {o[k]:g}" for k in (
        "repetition_penalty", "no_repeat_ngram_size", "min_new_tokens")
        if o.get(k, BASE[k]) != BASE[k])
    if o["beam"] > 1:
        return f"beam {o['beam']}, length penalty {o['length_penalty']:g}{extra}"
    if not o["sample"]:
        return f"greedy{extra}"
    # NOTE: top_k is an int: `:g` wrote --top-k 1000000 as "top_k 1e+06"
    parts = [f"{k} {o[k] if isinstance(o[k], int) else format(o[k], 'g')}"
             for k in ("temperature", "top_k", "top_p") if k in o]
    return f"sampled ({', '.join(parts)}, seed {o['seed']}{extra})"
