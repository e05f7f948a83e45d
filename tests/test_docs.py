"""docs/language.md stays true: every ```nn block parses and checks, every ```nn-error block fails
with exactly the error in the ```text block after it (the file is called example.nn), and the
op table matches the registry (regenerate with `python -m tests.regen`)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from nnlang.errors import NNError
from nnlang.frontend.elaborate import elaborate
from nnlang.frontend.parser import parse
from tests.regen import DOC, doc_text

TEXT = DOC.read_text()
BLOCKS = re.findall(r"```(nn|nn-error)\n(.*?)```(?:\s*```text\n(.*?)```)?", TEXT, re.S)
GOOD = [src for kind, src, _ in BLOCKS if kind == "nn"]
BAD = [(src, want) for kind, src, want in BLOCKS if kind == "nn-error"]


def test_doc_has_examples():
    assert len(GOOD) >= 8 and len(BAD) >= 3


@pytest.mark.parametrize("src", GOOD, ids=[f"nn{k}" for k in range(len(GOOD))])
def test_example_checks(src):
    elaborate(parse(src, "example.nn"))


@pytest.mark.parametrize("src,want", BAD, ids=[f"error{k}" for k in range(len(BAD))])
def test_error_example(src, want):
    assert want, "an nn-error block must be followed by a ```text block with the error"
    with pytest.raises(NNError) as info:
        elaborate(parse(src, "example.nn"))
    assert info.value.render() + "\n" == want


def test_lint_warning_example_is_what_check_prints(tmp_path, monkeypatch):
    """The cross_entropy-on-a-softmax warning shown in language.md is the text `nnlang check`
    prints for a model whose line 5 is the line it quotes."""
    want = re.search(r"```text\n(m\.nn:5:8: warning: .*?)```", TEXT, re.S).group(1)
    import nnlang
    from nnlang.errors import NNError as Err
    (tmp_path / "m.nn").write_text(
        "model M {\n  input x: float32[batch, 8]\n  input label: int32[batch]\n"
        "  output probs = softmax(dense(x, 3))\n  loss cross_entropy(probs, label)\n}\n")
    monkeypatch.chdir(tmp_path)
    warnings = nnlang.load("m.nn").warnings
    assert len(warnings) == 1 and Err(warnings).render() + "\n" == want


def test_op_table_is_current():
    assert doc_text(DOC) == TEXT, "the op table is stale: run python -m tests.regen"


def test_every_op_is_documented():
    from nnlang.ops import registry

    for name, op in registry.all_ops().items():
        assert op.family == "source" or f"| `{name}` |" in TEXT, name


# *** docs/data.md: its files load and feed their models, its error text is exact ***

DATA_DOC = DOC.parent / "data.md"
DATA_TEXT = DATA_DOC.read_text()
DATA_BLOCKS = re.findall(r"```(\w+)(?: (file|loads)=(\S+))?\n(.*?)```", DATA_TEXT, re.S)
DATA_FILES = {name: body for kind, key, name, body in DATA_BLOCKS if key == "file"}


def test_data_doc_has_examples():
    assert {"reg.csv", "reg.nn", "bad.csv"} <= set(DATA_FILES)


@pytest.mark.parametrize("src", [b for kind, key, _, b in DATA_BLOCKS if kind == "nn" and not key])
def test_data_doc_model_checks(src):
    elaborate(parse(src, "example.nn"))


@pytest.mark.parametrize("nn", [n for n in DATA_FILES if n.endswith(".nn")])
def test_data_doc_file_feeds_its_model(nn, tmp_path, monkeypatch):
    import nnlang
    from nnlang.train import feeds
    for name, body in DATA_FILES.items():
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    program = nnlang.load(nn)
    ds = feeds.load_data(program.train.data)
    mapping = feeds.match_inputs(program.graph, ds.inputs, ds.targets)
    arrays = feeds.model_arrays(program.graph, ds.train.arrays, mapping)
    assert all(len(a) == len(ds.train) > 0 for a in arrays.values())


@pytest.mark.parametrize("name, want", [(n, b) for kind, key, n, b in DATA_BLOCKS
                                        if key == "loads"])
def test_data_doc_error(name, want, tmp_path, monkeypatch):
    from nnlang.data import DataError, load_dataset
    (tmp_path / name).write_text(DATA_FILES[name])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset(name)
    assert info.value.render() + "\n" == want


def test_data_doc_predict_lines_run_on_its_files(tmp_path):
    """data.md's `nnlang predict reg.nn -c RUN ...` lines, run as printed on a one-step training
    of reg.nn, give x @ weight + bias of the checkpoint for each line of its JSON lines file and
    each row of reg.csv (its price column skipped), written out in numpy."""
    import json
    import shlex

    from nnlang.train import checkpoint
    from tests.faults.conftest import cli
    lines = re.findall(r"^ {4}(nnlang predict reg\.nn .*?)(?:\s+#.*)?$", DATA_TEXT, re.M)
    assert {"--jsonl", "--csv"} <= {a for line in lines for a in shlex.split(line)}
    for name, body in DATA_FILES.items():
        (tmp_path / name).write_text(body)
    cli("train", "reg.nn", "--out", "run", "--max-steps", "1", code=0, cwd=tmp_path)
    state = checkpoint.load(tmp_path / "run").state
    weight, bias = state["p.weight"], state["p.bias"]   # reg.nn's dense layer, named by `p =`
    for line in lines:
        args = [("run" if a == "RUN" else a) for a in shlex.split(line)[1:]]
        got = [json.loads(r) for r in cli(*args, "--json", code=0, cwd=tmp_path).splitlines()
               if r.startswith("{")]
        source = args[args.index("--jsonl") + 1] if "--jsonl" in args else None
        if source:
            rows = [json.loads(r)["x"] for r in DATA_FILES[source].splitlines() if r.strip()]
            names = [f"{source}:{k + 1}" for k in range(len(rows))]
        else:
            table = DATA_FILES["reg.csv"].splitlines()
            rows = [[float(v) for v in r.split(",")[:2]] for r in table[1:]]
            names = [f"reg.csv:{k + 2}" for k in range(len(rows))]
        want = (np.array(rows, np.float64) @ weight.astype(np.float64) + bias)[:, 0]
        assert [r["input"] for r in got] == names, line
        np.testing.assert_allclose([r["value"] for r in got], want, rtol=1e-5, err_msg=line)


def test_data_doc_data_flag_spellings_are_the_same():
    """The two `--data` commands data.md calls the same give reg.nn's own `data`, and
    `--data imdb-sample` keeps the train section's `maxlen`."""
    import shlex

    from nnlang.frontend.train_config import Choice
    from nnlang.train import feeds
    flags = [shlex.split(line)[4] for line in re.findall(r"^ {4}(nnlang train reg\.nn --data .*)$",
                                                         DATA_TEXT, re.M)]
    assert len(flags) == 2
    want = Choice("reg.csv", {"target": "price"})   # reg.nn's csv("reg.csv", target = "price")
    assert [feeds.replace_data(None, f) for f in flags] == [want, want]
    imdb = Choice("imdb", {"vocab": 20000, "maxlen": 100})
    assert feeds.replace_data(imdb, "imdb-sample") == Choice("imdb-sample", imdb.options)


def test_data_doc_lists_every_dataset():
    from nnlang.data import list_datasets
    for name in list_datasets():
        assert f"| `{name}` |" in DATA_TEXT, name


# *** README.md: its model is models/mlp.nn, and its library example runs as printed ***

ROOT = DOC.parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_model_is_the_file_it_names():
    from nnlang.frontend.fmt import format_source
    block = re.search(r"```\n# (models/\S+\.nn)[^\n]*\n(.*?)```", README, re.S)
    path, body = block.groups()
    strip = lambda s: "\n".join(ln for ln in format_source(s).splitlines()  # noqa: E731
                                if ln.strip() and not ln.lstrip().startswith("#"))
    assert strip(body) == strip((ROOT / path).read_text()), f"README's block is not {path}"


def test_ci_runs_the_readmes_test_command():
    """.ci/run installs and tests exactly as the README's test command says (CI's contract)."""
    command = re.search(r"```\n(pip install '\.\[test\]' && .*)\n```", README).group(1)
    install, test = command.split(" && ")
    run = (ROOT / ".ci" / "run").read_text().split("# --- README: run the tests ---\n")[1]
    assert run.splitlines()[:2] == [install, test]


def _mlp_reference(params, x, y):
    """models/mlp.nn written out in float64 numpy from the net's own weights: logits, the mean
    cross-entropy, and its gradients by hand (backprop through dense, relu, softmax)."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    x = x.astype(np.float64)
    z1 = x @ p["h1.weight"] + p["h1.bias"]
    h1 = np.maximum(z1, 0)
    z2 = h1 @ p["h2.weight"] + p["h2.bias"]
    h2 = np.maximum(z2, 0)
    logits = h2 @ p["logits.weight"] + p["logits.bias"]
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    n = len(y)
    loss = -logp[np.arange(n), y].mean()
    d = np.exp(logp)
    d[np.arange(n), y] -= 1
    d /= n
    grads = {"logits.weight": h2.T @ d, "logits.bias": d.sum(0)}
    d = (d @ p["logits.weight"].T) * (z2 > 0)
    grads |= {"h2.weight": h1.T @ d, "h2.bias": d.sum(0)}
    d = (d @ p["h2.weight"].T) * (z1 > 0)
    grads |= {"h1.weight": x.T @ d, "h1.bias": d.sum(0), "image": d @ p["h1.weight"].T}
    return logits, float(loss), grads


def test_readme_library_example_runs(tmp_path, monkeypatch):
    """The ```python block of README.md, run as printed (x and y: one batch of 128), against a
    numpy twin of models/mlp.nn built from the net's weights."""
    import warnings
    pytest.importorskip("onnx")   # the block's last line exports (the `onnx` extra)
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.random((128, 784), dtype=np.float32)
    y = rng.integers(0, 10, 128).astype(np.int32)
    # NOTE: the first train_step changes the weights: the reference runs on a fresh twin
    import nnlang
    ref = nnlang.compile("models/mlp.nn", batch=128)
    _, want_loss, _ = _mlp_reference(ref.parameters(), x, y)
    scope = {"x": x, "y": y}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the cosine schedule's note about total_steps
        exec(compile(code, "README.md", "exec"), scope)
    net = scope["net"]
    assert scope["loss"] == pytest.approx(want_loss, rel=1e-5)
    # the block's `out`, `scores` and `grads` come after two steps: compare them at the net's
    # weights now
    logits, loss, grads = _mlp_reference(net.parameters(), x, y)
    assert set(scope["out"]) == {"logits"}
    np.testing.assert_allclose(scope["out"]["logits"], logits, rtol=1e-4, atol=1e-4)
    assert scope["scores"] == {"cross_entropy": pytest.approx(loss, rel=1e-5),
                               "acc": pytest.approx(np.mean(logits.argmax(1) == y))}
    assert set(scope["grads"]) == set(grads)
    for k, g in grads.items():
        np.testing.assert_allclose(scope["grads"][k], g, rtol=1e-3, atol=1e-6, err_msg=k)
    assert (tmp_path / "mlp.onnx").stat().st_size > 2_000_000
    # the block's last line: a checkpoint that restores to the same net
    back = nnlang.restore("models/mlp.nn", "mlp-saved")
    assert back.step == net.step
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)


# *** the CLI the docs describe is the CLI there is ***

ALL_DOCS = {p.relative_to(ROOT).as_posix(): p.read_text()
            for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
FLAG = r"(?<![\w-])--?[a-z][a-z0-9-]*"


def _options() -> dict[str, list[set[str]]]:
    """Each subcommand of `nnlang` and, per option, its spellings (`--output`, `-o`)."""
    import typer

    from nnlang_cli.main import app

    def params(cmd):   # NOTE: a group's (`nnlang cache clear`) are its subcommands'
        return [*cmd.params, *(p for sub in getattr(cmd, "commands", {}).values()
                               for p in sub.params)]
    return {name: [{*p.opts, *p.secondary_opts} for p in params(cmd)
                   if p.param_type_name == "option"]
            for name, cmd in typer.main.get_command(app).commands.items()}


def _command_lines(text: str) -> list[tuple[str, str]]:
    """(command, the rest) of each `nnlang CMD ...` in inline code, code blocks and indented
    command lines; prose (`nnlang is a compiler`) is left alone."""
    code = re.findall(r"`([^`\n]+)`", text)
    code += re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
    code += re.findall(r"^ {4,}((?:\w+=\S+ )*(?:mpirun|srun|nnlang) .*)$", text, re.M)
    return [m for c in code for m in re.findall(r"(?<![\w./-])nnlang ([a-z]+)\b([^`|;\n]*)", c)]


def test_docs_name_only_real_commands_and_their_flags():
    """`nnlang CMD ... --flag` in the docs: CMD is a subcommand and --flag one of its options
    (contributing.md named a `nnlang summary` there is not)."""
    commands, wrong = {c: set().union(*o) for c, o in _options().items()}, []
    for doc, text in ALL_DOCS.items():
        for cmd, rest in _command_lines(text):
            if cmd not in commands:
                wrong.append(f"{doc}: nnlang {cmd}")
                continue
            for flag in re.findall(FLAG, rest):
                if flag not in commands[cmd] and not flag.endswith("-"):
                    wrong.append(f"{doc}: nnlang {cmd} ... {flag}")
    assert wrong == []


def test_every_cli_option_is_documented():
    """Every option of every subcommand is named in README.md or docs/ by one of its
    spellings (`--no-<pass>` stands for the compile switches)."""
    import nnlang
    named = {f for text in ALL_DOCS.values() for f in re.findall(FLAG, text)}
    named |= {f"--no-{p.replace('_', '-')}" for p in nnlang.pass_switches()}
    missing = [f"nnlang {cmd} {max(o, key=len)}" for cmd, opts in _options().items()
               for o in opts if "--help" not in o and not o & named]
    assert missing == []


def _data_table_rows() -> dict[str, str]:
    """docs/data.md's "Naming a data set" table: name -> its options cell."""
    rows = re.findall(r"^\| `\"?([\w.-]+?)\"?` \| .*? \| ([^|]*) \|$", DATA_TEXT, re.M)
    return dict(rows)


def test_data_doc_option_defaults_are_the_loaders():
    """Each data set's options in docs/data.md are its loader's parameters, with the loader's
    defaults (the `.npz` row gave `targets = ["y"]`, whose default is the arrays named label,
    labels, y or target, and the `.csv` row left out `val` and `test`)."""
    import ast
    import inspect

    from nnlang.data.registry import DATASETS, FILE_LOADERS
    rows = _data_table_rows()
    loaders = {n: e.loader for n, e in DATASETS.items()}
    loaders |= {"file" + ext: f for ext, f in FILE_LOADERS.items()}
    for name, loader in loaders.items():
        cell = rows[name]
        if cell.startswith("as `"):
            cell = rows[cell[4:cell.index("`", 4)]]
        params = {p: v.default for p, v in inspect.signature(loader).parameters.items()
                  if p not in ("data_dir", "path", "words")}   # words: from a checkpoint
        documented = {k: v for k, v in re.findall(r"`(\w+)(?: = ([^`]+?))?`", cell)
                      if k != "none"}
        assert set(documented) == set(params), name
        for p, text in documented.items():
            if text:
                value = None if text == "none" else ast.literal_eval(text)
                assert value == params[p], (name, p)


def test_every_cli_option_has_help():
    """`nnlang CMD --help` says what each option is for (train's --epochs, --batch, --seed and
    eval's --batch showed only their type)."""
    import typer

    from nnlang_cli.main import app
    bare = [f"nnlang {name} {p.opts[0]}"
            for name, cmd in typer.main.get_command(app).commands.items()
            for p in cmd.params if not getattr(p, "help", None)]
    assert bare == []


def test_generate_help_gives_the_defaults_generation_md_gives():
    """generation.md: --max-new defaults to 100 (or the section's max_new), --seed to 0;
    `nnlang generate --help` said neither (nor the length penalty's 1)."""
    import typer

    from nnlang.frontend.generate_config import BASE
    from nnlang_cli.main import app
    cmd = typer.main.get_command(app).commands["generate"]
    helps = {p.opts[0]: p.help for p in cmd.params}
    gen = (ROOT / "docs" / "generation.md").read_text()
    assert "(default 100, or the section's `max_new`)" in gen and "(default 0)" in gen
    for flag, key in (("--max-new", "max_new"), ("--seed", "seed"),
                      ("--length-penalty", "length_penalty")):
        assert f"the generate section's {key}, else {BASE[key]:g})" in helps[flag], flag


def test_every_model_option_says_the_same():
    """--model picks a model the file defines or imports: every command says so in one text
    (compile said "Which model of the file.", train "when the file defines several")."""
    import typer

    from nnlang_cli.main import app
    texts = {name: p.help for name, cmd in typer.main.get_command(app).commands.items()
             for p in cmd.params if "--model" in p.opts}
    assert len(texts) >= 4 and len(set(texts.values())) == 1, texts
    assert "import" in next(iter(texts.values()))


def _doc_attribute_refs(text: str) -> list[tuple[str, str]]:
    """(module stem, name) of each `module.name` in inline code whose module is one of
    nnlang's (`fold._sliced_elementwise`, `blas.matmul_call`); file names are left alone."""
    # NOTE: `net.x` in the docs is a Net object (README's example runs it), not runtime/net.py
    stems = {p.stem for p in (ROOT / "nnlang").rglob("*.py")} - {"net"}
    return [(m, n) for m, n in re.findall(r"`(\w+)\.([A-Za-z_]\w*)", text)
            if m in stems and n not in ("py", "npz", "csv", "json", "jsonl", "nn", "md", "txt",
                                                       "png", "xml", "log")]


def test_docs_name_code_that_exists():
    """Every `module.name` the docs point a reader to is defined in that module
    (performance.md pointed at numba_kernels.unfold2d, which moved to ops/windows.py)."""
    defined = {}
    for p in (ROOT / "nnlang").rglob("*.py"):
        defined.setdefault(p.stem, "")
        defined[p.stem] += p.read_text()
    missing = [f"{doc}: {m}.{n}" for doc, text in ALL_DOCS.items()
               for m, n in _doc_attribute_refs(text)
               if not re.search(rf"^\s*(?:def|class) {n}\b|^\s*{n}\b[^=\n]*=|\bself\.{n}\b",
                                defined[m], re.M)]
    assert missing == []


def test_readme_names_the_whole_public_api():
    """Every name `nnlang` exports is in README.md's library section (emit, dot and
    pass_switches were not)."""
    import nnlang
    missing = [n for n in nnlang.__all__ if n != "__version__" and f"nnlang.{n}" not in README]
    assert missing == []


def test_docs_name_run_directories_as_train_writes_them(tmp_path):
    """`runs/<name>-...` in the docs is the folder `nnlang train` makes for that model
    (README.md, export.md and generation.md wrote runs/MLP-..., runs/Cnn-..., runs/Gpt-<time>:
    the trainer writes runs/mlp-..., runs/cnn-..., runs/gpt-...)."""
    import nnlang
    from nnlang.train.runs import RunDir
    made = set()
    for f in sorted((ROOT / "models").glob("*.nn")):
        run = RunDir.create(nnlang.load(str(f)).model, root=tmp_path)
        made.add(run.path.name.rsplit("-", 2)[0])
        run.release()
    named = {f"{doc}: runs/{m}-" for doc, text in ALL_DOCS.items()
             for m in re.findall(r"(?<![\w/])runs/(\w+)-", text)}
    assert {n for n in named if n.rsplit("runs/", 1)[1][:-1] not in made} == set()


def test_readme_names_every_compile_view():
    """Each view `nnlang compile --emit` (and `nnlang.emit`) prints is named in README.md
    (`user`, the checked graph, was not)."""
    from nnlang.runtime.emit import EMITS
    assert [e for e in EMITS if f'"{e}"' not in README] == []


# *** docs/contributing.md: its example op, added as the text says, works ***

def test_contributing_elementwise_example_registers_a_working_op(monkeypatch):
    """The softsign line of contributing.md, run in nnlang/ops/elementwise.py's namespace, gives
    an op whose compiled forward and gradient equal softsign's, written out in numpy (its
    gradient called `square`, a composite, which no backend lowers: the step failed)."""
    import nnlang
    import nnlang.ops.elementwise as elementwise
    from nnlang.ops import registry
    registry.all_ops()
    monkeypatch.setattr(registry, "OPS", dict(registry.OPS))   # the op is gone after the test
    code = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "contributing.md").read_text(),
                      re.S)[0]
    exec(compile(code, "contributing.md", "exec"), dict(vars(elementwise)))
    net = nnlang.compile("model S {\n  input x: float32[batch, 5]\n  output y = softsign(x)\n"
                         "  loss mean(y * y)\n}", batch=3)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    x64 = x.astype(np.float64)
    y = x64 / (1 + np.abs(x64))
    dy_dx = 1 / (1 + np.abs(x64)) ** 2   # d/dx x / (1 + |x|)
    np.testing.assert_allclose(net.forward({"x": x})["y"], y, rtol=1e-6)
    np.testing.assert_allclose(net.gradients({"x": x}, inputs="x")["x"], 2 * y * dy_dx / y.size,
                               rtol=1e-5, atol=1e-7)
    # NOTE: its ONNX form too: tests/test_export.py runs every op, the new one included
    import onnxruntime
    proto = nnlang.export_onnx("model S {\n  input x: float32[batch, 5]\n  output y = "
                               "softsign(x)\n}")
    run = onnxruntime.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(run.run(["y"], {"x": x})[0], y, rtol=1e-6)


@pytest.mark.slow
def test_export_doc_python_example_runs(tmp_path, monkeypatch):
    """docs/export.md's Python example, on a one-step run of models/cnn.nn (~10 s): both files
    run in ONNX Runtime and give what nnlang gives for the checkpoint and the net."""
    ort = pytest.importorskip("onnxruntime")
    import nnlang
    from nnlang.train.trainer import fit
    text = (ROOT / "docs" / "export.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    run = tmp_path / "run"
    fit(str(ROOT / "models" / "cnn.nn"), {"epochs": 1}, "mnist-sample", out=run, max_steps=1,
        progress=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(ROOT / "models")
    scope = {}
    exec(compile(code.replace("runs/cnn-20261205-120000", str(run)), "export.md", "exec"), scope)
    rng = np.random.default_rng(0)
    for onnx_file, net, shape in (
            ("cnn.onnx", nnlang.restore("models/cnn.nn", run, batch=3), (3, 1, 28, 28)),
            ("mlp.onnx", scope["net"], (3, 784))):
        x = rng.random(shape, dtype=np.float32)
        name = next(iter(net.program.graph.inputs))
        want = net.forward({name: x})
        got = ort.InferenceSession(str(tmp_path / onnx_file),
                                   providers=["CPUExecutionProvider"]).run(None, {name: x})
        np.testing.assert_allclose(got[0], next(iter(want.values())), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_generation_doc_python_example_runs(tmp_path, monkeypatch, capsys):
    """docs/generation.md's Python example, on a one-step run of models/gpt.nn (~30 s)."""
    from nnlang.train.trainer import fit
    text = (ROOT / "docs" / "generation.md").read_text()
    code = next(b for b in re.findall(r"```text\n(.*?)```", text, re.S) if "restore(" in b)
    run = tmp_path / "run"
    fit(str(ROOT / "models" / "gpt.nn"), {"epochs": 1}, "imdb-text-sample", out=run,
        max_steps=1, progress=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(ROOT / "models")
    scope = {}
    exec(compile(code.replace("runs/gpt-...", str(run)), "generation.md", "exec"), scope)
    result = scope["result"]
    assert len(result.texts) == 2 and result.mode == "incremental"
    assert [s.prompt for s in result.samples] == ["This movie was", "I"]
    assert all(0 < len(s.ids) <= 80 for s in result.samples)
    assert capsys.readouterr().out.strip().endswith("incremental")
