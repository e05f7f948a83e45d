"""`nnlang generate`: text from a trained sequence model, a thin wrapper over `Net.generate`
(nnlang/runtime/generate.py) after restoring the checkpoint like `predict` does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nnlang_cli.app import app, console, finite_float, reporting
from nnlang_cli.train_cmds import BACKEND_HELP, CKPT_HELP, DATA_DIR_HELP, interruptible


@app.command()
def generate(
    file: Path = typer.Argument(..., help="The .nn file the checkpoint was trained from."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=CKPT_HELP),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="Text to continue "
                                               "(for an encoder-decoder: the source); "
                                               "repeatable: all prompts run in one batch."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="A UTF-8 file with "
                                               "one prompt per line."),
    max_new: Optional[int] = typer.Option(None, "--max-new", help="Most tokens to add."),
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
                                                   "are divided by length ** this."),
    stop: Optional[str] = typer.Option(None, "--stop", help="A token that ends a sequence "
                                       "(escapes like \\n work) or a token id."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sampling."),
    backend: str = typer.Option("numba", "--backend", help=BACKEND_HELP),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per prompt."),
):
    """Continue text prompts with a trained model: greedy (default without sampling settings),
    temperature / top-k / top-p sampling, or beam search. See docs/generation.md."""
    from nnlang.train.inference import restore
    out = console()
    with interruptible(out), reporting():
        prompts = _prompts(prompt, prompt_file)
        if stop is not None and stop.isdigit():
            stop = int(stop)
        net, _, _ = restore(str(file), checkpoint, backend, None, None if as_json else out)
        result = net.generate(prompts, max_new=max_new, temperature=temperature, top_k=top_k,
                              top_p=top_p, beam=beam, length_penalty=length_penalty, seed=seed,
                              stop=stop, greedy=greedy or None, data_dir=data_dir)
    if as_json:
        for s in result.samples:
            typer.echo(json.dumps({"prompt": s.prompt, "text": s.text, "ids": s.ids,
                                   "stopped": s.stopped, "score": s.score,
                                   "mode": result.mode}))
        return
    if result.mode != "incremental":
        out.print(f"note: recomputing the prefix for every token ({result.reason})",
                  markup=False)
    for s in result.samples:
        out.print(f"--- {_strategy(result.options)} ({s.stopped})", markup=False)
        out.print(s.prompt + s.text, markup=False)


def _prompts(given, path) -> list[str]:
    from nnlang.errors import NNError
    prompts = list(given or [])
    if path is not None:
        try:
            lines = path.read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise NNError(f"--prompt-file {path}: cannot read it ({err})") from None
        prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise NNError("no prompt given", hint="pass --prompt TEXT (repeatable) or "
                      "--prompt-file FILE")
    return prompts


def _strategy(o: dict) -> str:
    if o["beam"] > 1:
        return f"beam {o['beam']}, length penalty {o['length_penalty']:g}"
    if not o["sample"]:
        return "greedy"
    parts = [f"{k} {o[k]:g}" for k in ("temperature", "top_k", "top_p") if k in o]
    return f"sampled ({', '.join(parts)}, seed {o['seed']})"
