"""Using a trained model: restore a checkpoint into a compiled `Net`, evaluate it on a test
split, and predict from raw inputs (review text, images) with the vocabulary it was saved with.
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path

import numpy as np
from rich.console import Console

from nnlang.data.chars import tokenizer_from_meta
from nnlang.data.registry import trained_words
from nnlang.errors import NNError, Span, said_as
from nnlang.files import cannot_read, read_npy
from nnlang.frontend.source import decode as decode_text
from nnlang.ir.dims import Sym
from nnlang.ir.graph import no_output_error
from nnlang.ops.optim import OPTIMIZER_PREFIX
from nnlang.runtime.net import check_backend
from nnlang.train import checkpoint, feeds
from nnlang.train.overrides import resolve, source_of
from nnlang.train.progress import say
from nnlang.train.trainer import evaluate


def restore(program_or_path, ckpt_path, backend: str = "numba", batch: int | None = None,
            console: Console | None = None, optimizer: bool = True, sets: dict | None = None):
    """(net, checkpoint, config) with the checkpoint's parameters and hyper-parameters. A run
    directory gives its best.npz when it has one (the best epoch), else its checkpoint.npz.
    `optimizer`: the optimizer's slots too (to train on); eval, predict, generate and export
    leave them out, which for Adam is twice the weights' memory. `sets`: model
    hyper-parameters over the run's (`nnlang generate --set bptt=200`) that change no weight's
    shape; one that does is an error at it (the checkpoint would not fit)."""
    from nnlang.runtime.net import Net
    check_backend(backend)
    ckpt = checkpoint.load(ckpt_path, prefer_best=True)
    if sets:
        _check_model_sets(program_or_path, sets)
    if console and Path(ckpt_path).is_dir():
        best = ckpt.meta.get("best") if ckpt.path.name == checkpoint.BEST else None
        why = f" (best {best['monitor']} {best['value']:.4f}, epoch {best['epoch']})" \
            if best else ""
        say(console, f"using {ckpt.path}{why}")
    try:
        program, cfg, source, file, _ = resolve(program_or_path, ckpt.config, sets or None,
                                                ckpt.meta.get("model"),
                                                base_overrides=ckpt.meta.get("overrides"))
    except NNError as err:
        if len(err.diagnostics) > 1 or err.span is not None:
            raise  # NOTE: an error in the .nn file itself: its own words say where
        raise NNError(f"{ckpt.path} holds model '{ckpt.meta.get('model')}' (trained from "
                      f"{ckpt.meta.get('file')}), which {source_of(program_or_path)[1]} cannot "
                      f"give: {err.message}", hint="pass the .nn file the checkpoint was "
                      "trained from") from None
    if console and ckpt.trained_on_other_source(source):
        say(console, f"note: {file} differs from the source this checkpoint was trained with")
    # NOTE: the dtype it was saved in: a float64 net of `nnlang.save` came back float32.
    # batch=0 is an error, not the run's batch
    net = Net(program, backend=backend, batch=cfg.batch if batch is None else batch,
              seed=cfg.seed, dtype=ckpt.meta.get("dtype", "float32"),
              steps_per_epoch=ckpt.meta.get("steps_per_epoch"))
    net.config = cfg
    missing = [k for k in net.state if k not in ckpt.state]
    # NOTE: every mismatch at once, so a checkpoint of another model is plain from one error
    wrong = [f"{k} {list(ckpt.state[k].shape)} (the model's: {list(v.shape)})"
             for k, v in net.state.items() if k in ckpt.state and ckpt.state[k].shape != v.shape]
    # NOTE: trained weights the model has no place for (a layer deleted from the .nn) would
    # leave a different network behind, silently
    unused = [k for k in ckpt.state if k not in net.state and not k.startswith(OPTIMIZER_PREFIX)]
    if sets and (missing or wrong or unused):
        _set_changing_weights(program_or_path, ckpt, sets, model=ckpt.meta.get("model"))
    if missing or wrong or unused:
        why = ([f"no value for parameter(s) {', '.join(missing)}"] if missing else []) + \
              ([f"other shapes for {', '.join(wrong)}"] if wrong else []) + \
              ([f"trained parameter(s) {', '.join(unused)} that the model does not have"]
               if unused else [])
        raise NNError(f"{ckpt.path} does not fit model '{net.program.model}': "
                      + "; ".join(why), hint="was it saved from another model or with other "
                      + said_as("--set values?", "overrides (load's overrides=)?"))
    # NOTE: the optimizer's state and the run's place in its schedule too: a loop that trains
    # the restored net on goes on where the run stopped (only the weights were loaded, so Adam's
    # moments, the step and the epoch started over)
    ckpt.load_into(net, optimizer)
    net.total_steps = ckpt.meta.get("total_steps", 0)
    net.tokenizer = tokenizer_from_meta(ckpt.data_meta)   # what net.generate encodes with
    # NOTE: copies: the net's records are its own. The checkpoint's meta itself was the net's
    # loop_state (and its "data" the net's trained_data), so a change to the returned
    # checkpoint (or to one record) moved where fit(net) went on, or what nnlang.save wrote
    net.trained_data = copy.deepcopy(ckpt.meta.get("data"))   # what nnlang.save of it keeps
    net.loop_state = copy.deepcopy(ckpt.meta)   # fit(net) goes on as --resume of it would
    return net, ckpt, cfg


def _check_model_sets(program_or_path, sets: dict) -> None:
    """--set over a trained run names model hyper-parameters only: a train setting (lr, batch,
    epochs) has nothing to change where no training runs, and was dropped without a word."""
    from nnlang.train.overrides import given_span, split_overrides
    source, file = source_of(program_or_path)
    _, train = split_overrides(sets, source, file)
    if train:
        k = next(iter(train))
        raise NNError(f"--set {k}: '{k}' is a train setting, which a trained model does not "
                      "use here", given_span(getattr(sets, "spans", {}), k, name=True),
                      "give the model's hyper-parameters only, e.g. a sequence length that "
                      "changes no weight's shape")


def _set_changing_weights(program_or_path, ckpt, sets: dict, model) -> None:
    """The error at the first --set that alone gives a weight another shape than the
    checkpoint's: its weights would not fit the model built with it."""
    from nnlang.frontend.elaborate import load_text
    from nnlang.ir.dims import fmt_shape
    from nnlang.train.overrides import given_span
    source, file = source_of(program_or_path)
    base = ckpt.meta.get("overrides") or {}
    for k, v in sets.items():
        graph = load_text(source, file, {**base, k: v}, model).graph
        shapes = {n: tuple(graph.node(i).shape) for n, i in graph.params.items()}
        changed = [f"'{n}' {fmt_shape(shape)} (the checkpoint's "
                   f"{fmt_shape(ckpt.state[n].shape)})" for n, shape in shapes.items()
                   if n in ckpt.state and tuple(ckpt.state[n].shape) != shape]
        gone = [n for n in ckpt.state if n not in shapes and not n.startswith(OPTIMIZER_PREFIX)]
        if changed or gone or any(n not in ckpt.state for n in shapes):
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            what = ("gives weight " + ", ".join(changed[:3]) + more) if changed else \
                "changes which weights the model has"
            raise NNError(f"--set {k}={v} {what}: the weights of {ckpt.path} do not fit "
                          "the model built with it", given_span(getattr(sets, "spans", {}), k),
                          "only a hyper-parameter that changes no weight's shape (such as a "
                          "recurrent model's sequence length) can differ from the run's")


def evaluate_checkpoint(program_or_path, ckpt_path, data=None, data_dir=None,
                        backend: str = "numba", batch: int | None = None,
                        console: Console | None = None) -> tuple[str, dict]:
    """(split evaluated, {loss, metrics...}) on the test split of the checkpoint's dataset (or
    `data`); a dataset without a test split falls back to the seeded validation carve."""
    net, ckpt, cfg = restore(program_or_path, ckpt_path, backend, batch, console,
                             optimizer=False)
    file = source_of(program_or_path)[1]
    ds, split, arrays = held_out_arrays(net, cfg, data, data_dir,
                                        Path(file).parent if file != "<string>" else None,
                                        trained_words(ckpt.data_meta))
    note = checkpoint.check_encoding(ckpt.path, ckpt.meta, ds, "evaluate it in Python on "
                                     "the arrays you encoded (nnlang.restore, net.evaluate)")
    if note and console:
        say(console, note)
    return split, evaluate(net, arrays, net.batch, console)


def held_out_arrays(net, cfg, data, data_dir, folder, words=None) -> tuple:
    """(dataset, "test" | "val", the model's arrays) held out from training: the test split of
    the run's dataset (or `data`), else the run's seeded validation carve; text encoded with
    the checkpoint's vocabulary `words` (another data set would build its own)."""
    choice = feeds.replace_data(cfg.data, str(data)) if data is not None else cfg.data
    ds = feeds.load_data(choice, data_dir, folder, words, net.program)
    mapping = feeds.match_inputs(net.user, ds.inputs, ds.targets, f"dataset '{ds.name}'")
    if len(ds.test):
        arrays = feeds.model_arrays(net.user, ds.test.arrays, mapping)
        # NOTE: after the casts' own checks, as training does: an id out of range is said with
        # its file, split and row, not only as the kernel's bounds check saw it
        feeds.check_ids(net.user, ds, mapping, [ds.test])
        return ds, "test", arrays
    arrays = feeds.train_and_val(net.user, ds, mapping, cfg.val_split, cfg.seed)[1]
    if arrays:
        feeds.check_ids(net.user, ds, mapping, [ds.train, ds.val])
    if not arrays:
        raise NNError(f"dataset '{ds.name}' has no test split and no validation split of "
                      f"its own, and the run's val_split is {cfg.val_split:g}, so nothing of it "
                      "was held out", hint="pass --data with a test split (.npz: "
                      "train_*/test_* arrays; .csv: csv(\"train.csv\", test = \"test.csv\")), "
                      "or train with val_split")
    return ds, "val", arrays


def predict(program_or_path, ckpt_path, inputs: list | None = None, backend: str = "numba",
            console: Console | None = None, named: list[str] | None = None,
            npz: str | Path | None = None, jsonl: str | Path | None = None,
            csv: str | Path | None = None):
    """Yields, per batch of examples run, one dict per example and model output (the
    outputs in the model's order, each over the batch's examples): {input, output, kind, ...},
    so a caller shows each batch when it is done (a bad late line of a --jsonl file stops the
    run after the earlier batches' results, not before any). The examples come
    from one of: `inputs`, raw values for a model with one input (review text or a .txt path
    for text models, a .png/.npy path for image models, a .npy path or numbers otherwise);
    `named`, "NAME=VALUE" strings, a name repeated once per example; `npz`, a file with one
    array per input; `jsonl`, a file with one JSON object per line and example, {"NAME":
    value} per input; `csv`, a table (a header, then one row of numbers per example) for a
    model with one input. Text is encoded with the checkpoint's tokenizer. The kind comes from the
    graph (`output_kind`): "class" and "binary" add label, probability and class; "sequence"
    adds ids and text (decoded when the data set has a tokenizer); "value" and "tensor" add
    value (the numbers, as lists) and shape."""
    net, ckpt, cfg = restore(program_or_path, ckpt_path, backend, None, console,
                             optimizer=False)
    if not net.user.outputs:
        raise no_output_error(net.user, "to predict")
    meta = ckpt.data_meta
    if "data" not in ckpt.meta and cfg.data is not None and console:
        # NOTE: the data set's encoding (a vocabulary, an image's scaling) is not the net's to
        # know: predict must not guess it, so it reads the model's own arrays
        say(console, f"note: {ckpt.path} was saved by nnlang.save without its data set, so "
                     f"inputs are read as numbers or .npy arrays, not encoded as "
                     f"'{cfg.data.name}' would (nnlang.save(net, path, data=...) records it)")
    names = meta.get("class_names")
    per_output = [k for k, nid in net.user.outputs.items() if _per_example(net.user.node(nid))]
    skipped = [k for k in net.user.outputs if k not in per_output]
    if not per_output:
        shown = ", ".join(f"{k}: {net.user.node(v).type}" for k, v in net.user.outputs.items())
        raise NNError(f"model '{net.program.model}' has no output with one row per example "
                      f"({shown})",
                      hint="predict shows outputs whose first dim is the batch; export the "
                           "model (nnlang export) or use the Python API for the others")
    if skipped and console:
        say(console, f"note: output(s) {', '.join(skipped)} have no batch dim, so predict does "
                     "not show them per example")
    if net.program.generate is not None and console:
        # NOTE: a sequence model's outputs score every position of the input at once (teacher
        # forcing): `predict gpt.nn "This movie"` showed one character per input position,
        # which read like a broken continuation
        goal = "decode a source" if net.program.generate.source else "continue a prompt"
        say(console, f"note: predict shows one forward pass over the given inputs; to {goal}, "
                     f"run `nnlang generate {net.program.file} -c RUN --prompt TEXT`")
    # NOTE: a batch at a time: whole reviews pad to the longest of their batch, and an
    # attention model's scores grow with its square
    for batch, described in model_inputs(net.user, meta, inputs, named, npz, net.batch,
                                         jsonl=jsonl, csv=csv):
        # NOTE: an overflow is the result's to report (the CLI warns per example), not numpy's
        # RuntimeWarning naming a line of the backend
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            outputs = net.forward(batch)
        rows = []
        for oname in per_output:
            value = np.asarray(outputs[oname])
            nid = net.user.outputs[oname]
            kind, logits = output_kind(net.user, nid, value)
            cut = binary_cut(net.user, nid, logits)
            given = _text_lengths(batch, value, meta) if kind == "sequence" else None
            rows += [{"input": raw, "output": oname, "kind": kind, **r} for raw, r in
                     zip(described, interpret_output(value, kind, logits, names, meta, cut,
                                                     given))]
        yield rows


def _text_lengths(batch: dict, value: np.ndarray, meta: dict) -> list[int] | None:
    """Each example's own length along a sequence output's time axis: the tokens before the
    padding of the one character-tokenized input as long as that axis (None when no single
    input is). NOTE: a text shorter than the input (`predict gpt.nn "This movie was"`) is
    padded, and the positions past it showed predictions read from padding as more text."""
    chars = tokenizer_from_meta(meta)
    if chars is None or value.ndim != 3:
        return None
    same = [a for a in batch.values() if np.ndim(a) == 2 and np.shape(a)[1] == value.shape[1]
            and np.issubdtype(np.asarray(a).dtype, np.integer)]
    if len(same) != 1:
        return None
    real = np.asarray(same[0]) != chars.pad_id
    return [int(np.flatnonzero(r)[-1]) + 1 if r.any() else 0 for r in real]


def _per_example(node) -> bool:
    return bool(node.shape) and node.shape[0] == Sym.of("batch")


# *** raw inputs -> the model's input arrays ***

def model_inputs(graph, meta: dict, inputs=None, named=None, npz=None, size: int = 0,
                 jsonl=None, csv=None):
    """Yields ({input name: batch array}, a description of each example) for each run of
    `size` examples (0: all at once) from exactly one of the five ways `predict` takes
    inputs; every input the outputs read must get a value."""
    features, targets = feeds.input_roles(graph)
    given = [w for w, v in (("inputs", inputs), ("--input", named), ("--npz", npz),
                            ("--jsonl", jsonl), ("--csv", csv)) if v]
    if len(given) != 1:
        raise NNError("predict needs inputs" if not given else
                      f"pass the inputs one way, not {' and '.join(given)}",
                      hint=_how_to_pass(graph, features))
    if npz:
        examples = _each(*_from_npz(Path(npz), graph, features, targets))
    elif jsonl:
        examples = _from_jsonl(Path(jsonl), graph, features, targets)
    elif csv:
        examples = _each(*_from_csv(Path(csv), graph, meta, features, targets))
    elif named:
        raws = _from_flags(named, graph, features, targets)
        count = len(next(iter(raws.values())))
        examples = _each(raws, ["; ".join(f"{k}={raws[k][i]}" for k in raws)
                                for i in range(count)])
    else:
        if len(features) != 1:
            raise NNError(f"this model's outputs read {len(features)} inputs, so their "
                          "values need names", hint=_how_to_pass(graph, features))
        examples = _each({next(iter(features)): list(inputs)}, [str(r) for r in inputs])
    what = (lambda k: f"--npz {npz}, array '{k}'") if npz else \
        (lambda k: f"--input {k}") if named else \
        (lambda k: f"--jsonl {jsonl}, key '{k}'") if jsonl else \
        (lambda k: f"--csv {csv}") if csv else (lambda k: "the input")
    # NOTE: one net runs any length of a `symbol seq`, one length a call: examples of
    # several lengths (a3.npy a5.npy) run in consecutive groups of one shape, in order
    symbolic = _arrays_of_symbolic_length(graph, features, meta)
    # NOTE: texts of a symbolic length too, by the width each encodes to alone: padded to the
    # longest text of the call, a short one showed a token for each pad position and a model
    # that reads the whole text (an unmasked mean) other values at its own, so an example's
    # output depended on the others given with it
    texts = [] if symbolic or meta.get("kind") == "image" else _of_symbolic_length(graph, features)
    # NOTE: an image data set's other inputs (a conditional model's label) are no pictures
    plain = _image_inputs(features) ^ set(features) if meta.get("kind") == "image" else set()

    def run(group: list, lo: int):
        described = [d for _, d in group]
        # NOTE: a file's rows are said by their line ("row 1" was the example's index in its
        # run: blank lines left out, counted from each run of one shape)
        row = (lambda i: "line " + described[i].rpartition(":")[2]) if jsonl or csv else \
            (lambda i: f"row {lo + i}")
        return ({k: encode_input(k, graph.node(features[k]), [r[k] for r, _ in group],
                                 _plain(meta) if k in plain else meta, what(k), lo, row)
                 for k in group[0][0]}, described)

    # NOTE: examples are taken as they come (a --jsonl file is read a line at a time): a run
    # of `size` (0: all) ends early where the shape changes; a full one is run before the
    # next example is read (a bad one stops the run after it, not before)
    group, shape, lo = [], None, 0
    for raw, described in examples:
        if symbolic:
            raw = {k: r if isinstance(r, np.ndarray) else _read_values(r) for k, r in raw.items()}
        now = tuple(np.shape(r) for r in raw.values()) if symbolic else \
            tuple(encode_input(k, graph.node(features[k]), [raw[k]], meta, what(k), lo +
                               len(group)).shape for k in texts if k in raw) or None
        if group and now != shape:
            yield run(group, lo)
            group, lo = [], lo + len(group)
        group.append((raw, described))
        shape = now
        if len(group) == size:
            yield run(group, lo)
            group, lo = [], lo + len(group)
    if group:
        yield run(group, lo)


def _each(raws: dict[str, list], described: list):
    """(one example's {input: value}, its description), for each example of `raws`."""
    for i, d in enumerate(described):
        yield {k: v[i] for k, v in raws.items()}, d


def _of_symbolic_length(graph, features: dict) -> list[str]:
    """The inputs with a symbol besides the batch in their type."""
    return [k for k, nid in features.items()
            if any(isinstance(d, Sym) and d != Sym.of("batch") for d in graph.node(nid).shape[1:])]


def _arrays_of_symbolic_length(graph, features: dict, meta: dict) -> bool:
    """Inputs read as arrays (not text, which runs by the width it encodes to, nor images),
    one of them with a symbol besides the batch in its type."""
    if meta.get("kind") in ("image", "text") or tokenizer_from_meta(meta) is not None:
        return False
    return bool(_of_symbolic_length(graph, features))


def _image_inputs(features: dict) -> set:
    """The inputs an image data set's pictures fed in training (its arrays `image` and `label`,
    mnist.from_uint8, matched by name first, then the one left over, as feeds.match_inputs):
    a conditional model's `label` input is a class id, not a picture."""
    if "image" in features:
        return {"image"}
    return {k for k in features if k != "label"}


def _plain(meta: dict) -> dict:
    """An image data set's meta for an input that is no picture: its values as they are."""
    return {k: v for k, v in meta.items() if k not in ("kind", "image_shape")}


def _how_to_pass(graph, features: dict) -> str:
    ins = ", ".join(f"{k}: {graph.node(v).type}" for k, v in features.items())
    if len(features) == 1:
        return (f"pass values for its input ({ins}) as arguments, or from --csv FILE (a "
                "row per example) or --jsonl FILE")
    return (f"the outputs read {ins}: pass each with --input NAME=VALUE (repeat a name for "
            "more examples), or all from --npz FILE holding one array per input, or from "
            '--jsonl FILE holding one {"NAME": value, ...} per line')


def _from_flags(named: list[str], graph, features: dict, targets: dict) -> dict[str, list]:
    raws: dict[str, list] = {}
    for flag in named:
        name, eq, value = flag.partition("=")
        name = name.strip()
        if not eq or not name:
            raise NNError(f"--input {flag!r} is not NAME=VALUE",
                          hint=_how_to_pass(graph, features))
        _known_input(name, f"--input {name}", graph, features, targets)
        raws.setdefault(name, []).append(value)
    _all_given(raws, "--input", graph, features)
    counts = {k: len(v) for k, v in raws.items()}
    if len(set(counts.values())) > 1:
        raise NNError("each input needs one value per example, but --input gave "
                      + ", ".join(f"{k} {n} time(s)" for k, n in counts.items()),
                      hint="repeat every name the same number of times")
    return {k: raws[k] for k in features}


def _file_given(path: Path, what: str) -> None:
    """The error for an input file (`what`: its flag or kind) that is not there."""
    if path.is_dir():   # NOTE: "file not found" sent the user looking for a path that is there
        raise NNError(f"{what} {path} is a folder, not a file", hint="pass the file in it")
    if not path.exists():   # NOTE: not is_file(): a pipe (`--csv <(...)`) is read as a file
        raise NNError(f"{what} file not found: {path}")


def _from_npz(path: Path, graph, features: dict, targets: dict):
    _file_given(path, "--npz")
    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):
            # NOTE: a .npy (one bare array, not an archive), where `with` was an internal error
            raise NNError(f"--npz {path} is a .npy file (one array), not an .npz archive of "
                          "arrays named like the model's inputs",
                          hint="pass a .npy path as an input itself (nnlang predict FILE -c "
                               f"RUN {path}), or write an .npz with numpy.savez(path, "
                               "NAME=array, ...)")
        with z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as err:
        raise NNError(f"cannot read --npz {path} ({err})",
                      hint="write it with numpy.savez(path, NAME=array, ...)") from None
    for k in arrays:
        if k not in targets:  # NOTE: a target array (a test set's labels) is not needed: skipped
            _known_input(k, f"--npz {path}: array '{k}'", graph, features, targets)
    _all_given(arrays, f"--npz {path}", graph, features)
    rows = {k: arrays[k].shape[0] if arrays[k].ndim else 0 for k in features}
    if len(set(rows.values())) > 1 or 0 in rows.values():
        raise NNError(f"--npz {path}: each array needs one row per example (axis 0), got "
                      + ", ".join(f"{k} {list(arrays[k].shape)}" for k in features),
                      hint="stack the examples along the first axis")
    n = rows[next(iter(features))]
    return {k: list(arrays[k]) for k in features}, [f"{path.name}[{i}]" for i in range(n)]


def _values_per_example(node) -> int | None:
    """How many numbers one example of `node` holds, when its shape says (else None)."""
    dims = node.shape[1:]
    return int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else None


def _from_jsonl(path: Path, graph, features: dict, targets: dict):
    """(one example's {input: value}, "FILE:LINE") for each line of one JSON object, {"NAME":
    value} per input (numbers, nested lists, or text for a text input); blank lines skipped.
    Errors say the file, line and column. NOTE: read a line at a time, as the examples are
    run: a file of many gigabytes was read whole (and its lines held twice) before the first."""
    import json
    _file_given(path, "--jsonl")
    found = False
    try:
        f = path.open("rb")
    except OSError as err:
        raise cannot_read(path, err) or NNError(f"cannot read --jsonl {path} ({err})") from None
    with f:
        # NOTE: lines end at \n (a \r before it dropped), as JSON Lines says: str.splitlines
        # also cut at U+2028, \x85 or \x0c, which a JSON string may hold unescaped
        for number, data in enumerate(f, 1):
            at = f"{path}:{number}"
            try:
                line = data.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                _not_utf8(data, path, number)
            line = line.removesuffix("\n").removesuffix("\r")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise NNError(f"{at}:{err.colno}: not JSON ({err.msg})",
                              hint='one object per line, e.g. {"x": [1, 2.5, 3]}') from None
            if not isinstance(row, dict):
                raise NNError(f"{at}: a JSON {type(row).__name__}, not an object naming the "
                              f"inputs", hint=f'write {{"{next(iter(features))}": ...}} per line')
            for k in row:
                if k not in targets:   # NOTE: a target (a test row's label) is not needed
                    _known_input(k, f"{at}: key '{k}'", graph, features, targets)
            _all_given(row, at, graph, features)
            found = True
            yield ({k: _json_value(row[k], at, k, graph.node(features[k])) for k in features},
                   f"{path.name}:{number}")
    if not found:
        raise NNError(f"--jsonl {path} holds no example", hint='one object per line, e.g. '
                      f'{{"{next(iter(features))}": ...}}')


def _not_utf8(data: bytes, path: Path, number: int):
    """Raises the located error for line `number` of a --jsonl file (`data`), which is not
    UTF-8: FILE:LINE:COL of its first bad byte, as `decode_text` names one in a whole file."""
    try:
        decode_text(data, str(path), "a JSON Lines file")
    except NNError as err:
        d = err.diagnostics[0]
        raise NNError(d.message, Span(str(path), number, d.span.col if d.span else 1),
                      d.hint) from None


def _json_value(value, at: str, name: str, node):
    """A JSON value as `encode_input` takes it: text stays text, numbers become an array of
    the count the input takes per example."""
    if isinstance(value, str):
        return value
    if (odd := _not_a_number(value)) is not None:
        # NOTE: numpy reads null as NaN and true as 1.0: one was "nan is not a finite number"
        # at an example's index, the other went in silently
        raise NNError(f"{at}: key '{name}' holds {odd}, not a number",
                      hint=f"input '{name}' is declared {node.type}: give numbers")
    try:
        arr = np.asarray(value, np.float64)
    except (ValueError, TypeError):
        raise NNError(f"{at}: key '{name}' is not numbers of one shape (rows of one length) "
                      "or text", hint=f"input '{name}' is declared {node.type}") from None
    want = _values_per_example(node)
    if want is not None and arr.size != want:
        raise NNError(f"{at}: key '{name}' has {arr.size} values, but model input '{name}' "
                      f"takes {want} per example: it is declared {node.type}", node.span,
                      hint=f"give every example {want} values")
    return arr


def _not_a_number(value) -> str | None:
    """The first null or boolean in a JSON value (nested lists) as JSON writes it, else None."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return next((v for v in map(_not_a_number, value) if v is not None), None)
    return None


def _from_csv(path: Path, graph, meta: dict, features: dict, targets: dict):
    """A table as training reads one (`data/npz.py`: a header, numbers only, errors at the
    line and column) for a model with one input: each row an example, its columns that
    input's values in file order; a column named like a training target (the table's
    `target`, or a target input) is skipped, so a training table predicts as it is."""
    from nnlang.data.npz import read_csv
    if len(features) != 1:
        raise NNError(f"--csv gives one input's values, but this model's outputs read "
                      f"{len(features)} inputs", hint=_how_to_pass(graph, features))
    _file_given(path, "--csv")
    header, rows, lines = read_csv(path)
    name, = features
    node = graph.node(features[name])
    skip = {*targets, meta.get("target_column", "label")}
    keep = [i for i, h in enumerate(header) if h not in skip]
    trained = meta.get("feature_names")
    if trained is not None and [header[i] for i in keep] != list(trained):
        # NOTE: a model trained on a table reads its columns by position: another order (or
        # another column) would go in silently as the wrong features
        raise NNError(f"{path}: columns {[header[i] for i in keep]} are not the ones the model "
                      f"was trained on, in order: {list(trained)}",
                      hint="give the training table's feature columns, in its order (its "
                           "target column may stay)")
    want = _values_per_example(node)
    if want is not None and len(keep) != want:
        shown = ", ".join(header[i] for i in keep)
        raise NNError(f"{path}:1: the table has {len(keep)} value column(s) ({shown}), but "
                      f"model input '{name}' takes {want} per example: it is declared "
                      f"{node.type}", node.span,
                      hint=f"give {want} columns besides a target column "
                           f"({', '.join(sorted(skip))})")
    return ({name: [row for row in rows[:, keep]]},
            [f"{path.name}:{int(line)}" for line in lines])


def _known_input(name: str, where: str, graph, features: dict, targets: dict) -> None:
    if name in features:
        return
    if name in targets:
        raise NNError(f"{where}: '{name}' is a training target; predict does not read it",
                      hint=f"the outputs read {', '.join(features)}")
    close = difflib.get_close_matches(name, list(features), n=1)
    raise NNError(f"{where}: the model has no input '{name}'",
                  hint=(f"did you mean '{close[0]}'? " if close else "")
                  + f"its outputs read {', '.join(features)}")


def _all_given(raws: dict, where: str, graph, features: dict) -> None:
    missing = [k for k in features if k not in raws]
    if missing:
        raise NNError(f"{where}: no value for model input(s) {', '.join(missing)}",
                      hint=_how_to_pass(graph, features))


def encode_input(name: str, node, raws: list, meta: dict, what: str,
                 first: int = 0, row=None) -> np.ndarray:
    """One input's values -> a batch array, using only the checkpoint's data set meta: text
    through its tokenizer, images (paths or arrays) through the loaders' scaling, other
    arrays (from an .npz, a .npy path or written numbers like 1,2.5) as they are. `row(i)`
    says example i in the errors of their values (default: its index)."""
    kind = meta.get("kind")
    arrays = [r for r in raws if isinstance(r, np.ndarray)]
    if kind == "image":
        # NOTE: arrays too (--npz rows): uint8 pixels from an .npz went in as 0..255 while the
        # same pixels as a .png or .npy were scaled to 0..1 as in training
        arr = np.concatenate([_image(r, meta["image_shape"], what, i) for i, r in enumerate(raws)])
    elif arrays:
        arr = _stack(arrays, what, node, first=first)
    elif kind == "text":
        _no_files_for_text(raws)
        from nnlang.data import tokenize
        ids = {w: i for i, w in enumerate(meta["vocab"])}
        arr = tokenize.encode([_read_text(r) for r in raws], ids, meta["tokenizer"]["maxlen"])
    elif tokenizer_from_meta(meta) is not None:
        texts = [str(r) for r in raws]
        length = node.shape[1] if isinstance(node.shape[1], int) else None  # NOTE: a symbol
        arr = tokenizer_from_meta(meta).encode_batch(texts, length, what)
    else:
        arr = _stack([_read_values(r) for r in raws], what, node, raws, first)
    return feeds.conform(name, arr, node, what, row)


def _image(raw, image_shape, what: str, row: int) -> np.ndarray:
    from nnlang.data.image import encode_image
    if not isinstance(raw, np.ndarray):
        return encode_image(raw, image_shape)   # NOTE: a path: its errors name it
    try:
        return encode_image(raw, image_shape)
    except NNError as err:
        raise NNError(f"{what}, row {row}: {err.message}", hint=err.hint) from None


def _stack(examples: list, what: str, node=None, raws: list | None = None,
           first: int = 0) -> np.ndarray:
    """The examples as one batch. NOTE: a ragged one is named (its row, as `check_values`
    counts them from 0, and what was written), with its length and the length the input
    takes: "the examples have different shapes ([3], [4])" left the user to find it."""
    if len({np.shape(e) for e in examples}) <= 1:
        return np.stack(examples)   # NOTE: all of one shape: `feeds.conform` checks it whole
    want = tuple(node.shape[1:]) if node is not None else ()
    size = int(np.prod(want)) if all(isinstance(d, int) for d in want) and want else None
    if size is not None:
        # NOTE: by the count of values, as `feeds.conform` reshapes [1, 28, 28] to [784]
        bad = next((i for i, e in enumerate(examples) if np.size(e) != size), None)
    else:
        bad = next((i for i, e in enumerate(examples)
                    if np.shape(e) != np.shape(examples[0])), None)
    if bad is None:
        return np.stack([np.reshape(e, want) for e in examples] if size is not None else examples)
    raw = raws[bad] if raws is not None else None
    shown = f" ({raw})" if isinstance(raw, (str, Path)) and len(str(raw)) <= 40 else ""
    got = np.shape(examples[bad])
    has = f"{np.size(examples[bad])} values" + (f", shape {list(got)}" if len(got) > 1 else "")
    row = f"{what}, row {first + bad}{shown}"
    if size is not None:
        takes = f"{size} per example" + (f" ({list(want)})" if len(want) > 1 else "")
        raise NNError(f"{row} has {has}, but model input '{node.name}' takes {takes}: it is "
                      f"declared {node.type}", node.span,
                      hint=f"give every example {size} values")
    raise NNError(f"{row} has shape {list(got)}, but row {first} has "
                  f"{list(np.shape(examples[0]))}: one run takes examples of one shape",
                  node.span if node is not None else None,
                  hint="give every example the same number of values")


def _sequences(value: np.ndarray, logits: bool, meta: dict, lengths=None) -> list[dict]:
    if logits:
        value = np.exp(value - value.max(-1, keepdims=True))
        value /= value.sum(-1, keepdims=True)
    decode = detokenizer(meta, value.shape[-1])
    out = []
    for i, probs in enumerate(value):
        probs = probs if lengths is None else probs[:lengths[i]]
        ids = probs.argmax(-1)
        out.append({"ids": ids.tolist(), "text": decode(ids) if decode else None,
                    "probability": probs.max(-1).tolist()})
    return out


def detokenizer(meta: dict, classes: int):
    """ids -> text through the data set's tokenizer, when the output's classes are its
    vocabulary (a model may score a few ids more than the tokenizer has, as `generate`
    allows: those write nothing); None when there is no such tokenizer."""
    chars = tokenizer_from_meta(meta)
    if chars is not None and chars.vocab_size <= classes:
        return chars.decode
    tok = meta.get("tokenizer") or {}
    vocab = meta.get("vocab")
    if meta.get("kind") == "text" and vocab and len(vocab) <= classes:
        pad = tok.get("pad_id", 0)
        return lambda ids: " ".join(vocab[i] for i in ids if i != pad and i < len(vocab))
    return None


def _read_text(raw) -> str:
    path = Path(str(raw))
    if path.suffix.lower() == ".txt" and "\n" not in str(raw):
        _file_given(path, "text")
        return path.read_text(encoding="utf-8", errors="replace")
    return str(raw)


# files a text model would otherwise read as the words of their name
_NOT_TEXT = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".npy", ".npz", ".csv", ".nn")


def _no_files_for_text(inputs) -> None:
    for raw in inputs:
        if Path(str(raw)).suffix.lower() in _NOT_TEXT and "\n" not in str(raw):
            raise NNError(f"'{raw}' looks like a file, but this model reads text",
                          hint="pass the review text itself, or a .txt file that holds it")


def _read_values(raw) -> np.ndarray:
    """A .npy path, or numbers written out: "0.5", "1,2,3", "[1, 2, 3]"."""
    text = str(raw)
    try:
        return np.array([float(x) for x in re.split(r"[,\s]+", text.strip(" []")) if x])
    except ValueError:
        pass  # NOTE: not numbers, so a path
    path = Path(text)
    if path.suffix.lower() != ".npy":
        raise NNError(f"'{raw}' is not a .npy file", hint="this model was trained on arrays; "
                      "write the numbers (1,2.5,3) or save one example with "
                      "numpy.save('x.npy', x)")
    _file_given(path, "input")
    return read_npy(path)


# an output whose value per example has at most this many numbers is printed whole
VALUE_NUMBERS = 16
# ops that change a tensor's shape, not its meaning: looked through when matching a loss's input
_SAME = ("squeeze", "reshape", "flatten", "expand_dims", "identity")


def _through(graph, n: int) -> int:
    while graph.node(n).op in _SAME:
        n = graph.node(n).inputs[0]
    return n


def output_kind(graph, nid: int, value: np.ndarray) -> tuple[str, bool]:
    """(kind, logits): what an output is, from the losses it was trained with (never from its
    numbers): "class" (cross_entropy's logits, or their softmax: one class per example),
    "sequence" (the same over [batch, time, classes]: one class per position), "binary"
    (bce_with_logits' logit or its sigmoid, bce's probability), else "value" (regression)
    or, past VALUE_NUMBERS numbers per example, "tensor". `logits`: the output
    is the loss's raw input (softmax / sigmoid still to apply)."""
    def through(n):
        return _through(graph, n)
    trained = {}
    for loss_nid in graph.losses.values():
        node = graph.node(loss_nid)
        if node.op in ("cross_entropy", "bce_with_logits", "bce"):
            trained[through(node.inputs[0])] = node.op
    node = graph.node(through(nid))
    per = value.reshape(len(value), -1).shape[1] if value.ndim else 1
    op = trained.get(through(nid))
    if op is None and node.op in ("softmax", "sigmoid"):
        inner = trained.get(through(node.inputs[0]))
        op = {("softmax", "cross_entropy"): "softmax",
              ("sigmoid", "bce_with_logits"): "sigmoid"}.get((node.op, inner))
    logits = op in ("cross_entropy", "bce_with_logits")
    if op in ("cross_entropy", "softmax") and value.ndim == 2:
        return "class", logits
    if op in ("cross_entropy", "softmax") and value.ndim == 3:
        return "sequence", logits
    if op in ("bce_with_logits", "bce", "sigmoid") and per == 1:
        return "binary", logits
    return ("value" if per <= VALUE_NUMBERS else "tensor"), False


def binary_cut(graph, nid: int, logits: bool) -> float:
    """The probability above which a binary output says class 1: the threshold of the model's
    `binary_accuracy` on this output (on its logit, a threshold t is the probability
    sigmoid(t)), so predict and eval agree; 0.5 without one. `logits`: the output is a logit,
    printed as its sigmoid."""
    def prob(t):
        return float(1 / (1 + np.exp(-t)))

    def through(n):
        return _through(graph, n)
    out = through(nid)
    logit = graph.node(out).inputs[0] if graph.node(out).op == "sigmoid" else None
    for mid in graph.metrics.values():
        metric = graph.node(mid)
        if metric.op != "binary_accuracy":
            continue
        t = float(metric.attrs["threshold"])
        on = through(metric.inputs[0])
        if on == out:
            return prob(t) if logits else t
        if logit is not None and on == through(logit):
            return prob(t)
        if graph.node(on).op == "sigmoid" and through(graph.node(on).inputs[0]) == out:
            return t   # the metric cuts sigmoid(output): the printed probability is that
    return 0.5


def interpret_output(value: np.ndarray, kind: str, logits: bool = False,
                     class_names=None, meta: dict | None = None, cut: float = 0.5,
                     lengths: list[int] | None = None) -> list[dict]:
    """Per example: for "class" and "binary" the label, its probability and class id
    (softmax / sigmoid applied to logits: the graph says which the output is; a binary one
    is class 1 above `cut`); for "sequence"
    the most likely id at each position, its probability and the ids decoded as text by the
    data set's tokenizer (`meta`) when it has one, up to each example's `lengths` when given;
    otherwise the numbers and their shape."""
    if kind == "sequence":
        return _sequences(value.astype(np.float64), logits, meta or {}, lengths)
    if kind not in ("class", "binary"):
        return [{"value": np.asarray(v).tolist(), "shape": list(np.shape(v))} for v in value]
    per = value.reshape(len(value), -1).astype(np.float64)
    probs = per
    if kind == "binary":
        p = 1 / (1 + np.exp(-per[:, 0])) if logits else per[:, 0]
        # NOTE: > as binary_accuracy counts: at exactly 0.5 (float32's sigmoid of any
        # |logit| < 3e-8) eval counted class 0 where predict printed 1
        out = [(int(pi > cut), float(pi if pi > cut else 1 - pi)) for pi in p]
    else:
        if logits:
            e = np.exp(per - per.max(1, keepdims=True))
            probs = e / e.sum(1, keepdims=True)
        out = [(int(np.argmax(q)), float(np.max(q))) for q in probs]
    return [{"label": class_names[c] if class_names and c < len(class_names) else str(c),
             "probability": p, "class": c} for c, p in out]
