"""Every shell command in README.md and docs/*.md runs here as written, so a documented command cannot rot.

Commands are taken from fenced code blocks (bash/sh/shell: every line; console: `$ ` lines; plain: lines that start
with a known program), indented code blocks and inline code spans that start with a known program. Each is checked
by what it is:
- `snakemake ...` runs in a temporary copy of the workflow, in dry-run form (`-n` added unless it is already
  read-only), with `my.yaml` = the README's example config;
- `fusepipe ...` is parsed by the real CLI (unknown subcommands or options, missing values, choices, extra
  arguments fail); `plan` and `schema` run for real in the copy; synopses (`[--opt]`, `a|b`, `…`, placeholders)
  only need their subcommand and options to exist;
- `make X` runs as `make -n X`; `python -m M` needs M importable; `python script.py --opt ...` needs the script and
  its options (`--help`); `bash script.sh --opt` needs the script (`bash -n`) and its options; `pip install -e
  ".[extra]"` needs the extras in pyproject.toml; `export` needs NAME=value.
Commands that cannot run here are listed in SKIP with the reason. Anything else fails: a new kind of command must
be taught to this test or listed."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import REPO, copy_workflow

from fusepipe.cli import cli

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAMS = {"snakemake", "fusepipe", "make", "python", "python3", "pip", "sbatch", "srun", "conda", "cat", "export",
            "pytest", "bash", "git"}  # fmt: skip
SHELL_LANGS = {"bash", "sh", "shell", "zsh"}
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
SYNOPSIS = re.compile(r"[\[\]|…]|\.\.\.|(?:^|\s)[A-Z][A-Z_]*(?:\s|$)")
PLACEHOLDERS = {"config/recipes/X.yaml": "config/recipes/fusechat-7b.yaml"}  # "every recipe": one stands for all
READ_ONLY = {"-n", "--dry-run", "--lint", "--list-changes", "--summary", "--detailed-summary"}
RUN_FUSEPIPE = {"plan", "schema"}  # cheap and offline: run for real in the workflow copy

SKIP = {
    'python -m venv .venv && .venv/bin/pip install -e ".[gpu,slurm]"':
        "installs the GPU extras (vLLM, DeepSpeed for CUDA) from the network into a new venv",
    "snakemake all --profile slurm --sdm conda --conda-create-envs-only": "needs conda, not installed here",
    "snakemake all --profile slurm --sdm conda": "needs conda, not installed here",
    "snakemake --report": "renders the report of a finished run (needs every job's outputs)",
    "cat results/align/openchat~starling/coverage.json": "reads a finished run's output (the cluster example's models)",
    "cat results/report/summary.txt": "reads a finished run's output",
}  # fmt: skip


@dataclass(frozen=True)
class Command:
    where: str  # "docs/x.md:12"
    text: str

    @property
    def words(self) -> list[str]:
        words = shlex.split(self.text)
        while words and ENV.match(words[0]):
            words = words[1:]
        return words


def _starts_with_program(text: str) -> bool:
    words = text.split()
    while words and ENV.match(words[0]):
        words = words[1:]
    return bool(words) and words[0] in PROGRAMS


def _strip_comment(line: str) -> str:
    return re.sub(r"(^|\s)#\s.*$", "", line).strip()


def extract(path: Path) -> list[Command]:
    """The shell commands of one Markdown file (see the module docstring for which lines count)."""
    rel = path.relative_to(REPO)
    lines = path.read_text().splitlines()
    found: list[Command] = []
    prose: list[str] = []
    fence: str | None = None
    pending = ""
    for n, line in enumerate(lines, 1):
        opening = re.match(r"^```(\w*)", line)
        if fence is None and opening:
            fence = opening.group(1)
            prose.append("")
            continue
        if fence is not None:
            if line.startswith("```"):
                fence = None
            else:
                text = None
                if fence in SHELL_LANGS:
                    text = _strip_comment(line)
                elif fence == "console" and line.startswith("$ "):
                    text = _strip_comment(line[2:])
                elif fence == "" and _starts_with_program(line):
                    text = _strip_comment(line)
                if text and text.endswith("\\"):
                    pending += text[:-1] + " "
                elif text or pending:
                    found.append(Command(f"{rel}:{n}", pending + (text or "")))
                    pending = ""
            prose.append("")
            continue
        if re.match(r"^ {4,}\S", line) and _starts_with_program(line.strip()):  # an indented code block
            found.append(Command(f"{rel}:{n}", _strip_comment(line)))
            prose.append("")
            continue
        prose.append(line)
    text = "\n".join(prose)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(m.group(1).split())
        if _starts_with_program(span) and len(span.split()) > 1:  # one word (`pytest`, `sbatch`): a mention
            found.append(Command(f"{rel}:{text[: m.start()].count(chr(10)) + 1}", span))
    return found


def all_commands() -> dict[str, Command]:
    """Unique command texts, each with its first place in the docs."""
    out: dict[str, Command] = {}
    for path in DOCS:
        for cmd in extract(path):
            out.setdefault(cmd.text, cmd)
    return out


COMMANDS = all_commands()


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    """A workflow copy with `my.yaml`: the README's example config for one's own models and data."""
    root = copy_workflow(tmp_path_factory.mktemp("docs"))
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Running on your own models and data"):]
    (root / "my.yaml").write_text(re.search(r"^```yaml\n(.*?)^```", section, re.MULTILINE | re.DOTALL).group(1))
    return root


def test_commands_are_found():
    """The extraction sees the commands the README and docs are known to hold (a guard against a silent parser)."""
    texts = set(COMMANDS)
    assert {"make run", "make test", "snakemake all --cores 8 --configfile my.yaml",
            "fusepipe inspect results/data/_manifest.json"} <= texts  # fmt: skip
    assert len(texts) > 40


def test_every_skip_is_still_in_the_docs():
    assert not set(SKIP) - set(COMMANDS), "stale SKIP entries: remove them"


@pytest.mark.parametrize("command", list(COMMANDS.values()), ids=lambda c: f"{c.where}: {c.text[:60]}")
def test_documented_command_runs_as_written(command: Command, workflow: Path, monkeypatch):
    if command.text in SKIP:
        pytest.skip(SKIP[command.text])
    words = command.words
    check = CHECKS.get(words[0])
    if check is None:
        pytest.fail(f"{command.where}: `{command.text}`: no way to check a `{words[0]}` command; teach "
                    "tests/test_docs_commands.py or add it to SKIP with the reason")
    check(command, words[1:], workflow, monkeypatch)


# ------------------------------------------------------------------------------------------------ checks


def check_snakemake(command: Command, args: list[str], workflow: Path, monkeypatch) -> None:
    args = [PLACEHOLDERS.get(a, a) for a in args]
    if not READ_ONLY & set(args):
        args.append("-n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workflow, check=False, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, (
        f"{command.where}: `{command.text}` fails as written (ran `snakemake {' '.join(args)}` in a workflow copy):\n"
        f"{out[-3000:]}")


def _resolve(args: list[str]) -> tuple[list[tuple[str, click.Command]], list[str]]:
    """The subcommand(s) the words name (`fuse|train` names two) and the words after them."""
    cmds: list[tuple[str, click.Command]] = [("fusepipe", cli)]
    while args and all(isinstance(c, click.Group) for _, c in cmds):
        names = args[0].split("|")
        if re.fullmatch(r"[A-Z][A-Z_]*", args[0]):  # `fusepipe STAGE`: any subcommand
            return [], []
        missing = [n for n in names for _, c in cmds if n not in c.commands]
        assert not missing, f"no subcommand {missing[0]!r} (have: {', '.join(cmds[0][1].commands)})"
        cmds = [(n, c.commands[n]) for n in names for _, c in cmds]
        args = args[1:]
    return cmds, args


def check_fusepipe(command: Command, args: list[str], workflow: Path, monkeypatch) -> None:
    try:
        cmds, rest = _resolve(list(args))
    except AssertionError as err:
        pytest.fail(f"{command.where}: `{command.text}`: {err}")
    synopsis = bool(SYNOPSIS.search(command.text.split(" ", 1)[1]))
    for name, cmd in cmds:
        known = {o for p in cmd.params for o in p.opts + p.secondary_opts}
        options = {w.strip("[]").split("=")[0] for w in rest if w.strip("[]").startswith("--")}
        assert options <= known, f"{command.where}: `{command.text}`: {name} has no {sorted(options - known)}"
        if synopsis or not rest:
            continue
        ctx = click.Context(cmd, info_name=name)
        try:
            opts, extra, _ = cmd.make_parser(ctx).parse_args(list(rest))
        except click.UsageError as err:
            pytest.fail(f"{command.where}: `{command.text}`: {err.format_message()}")
        assert not extra, f"{command.where}: `{command.text}`: unexpected argument(s) {extra}"
        for param in cmd.params:
            if isinstance(param.type, click.Choice) and opts.get(param.name) is not None:
                param.type.convert(opts[param.name], param, ctx)
    if not synopsis and rest and cmds and cmds[-1][0] in RUN_FUSEPIPE:  # a bare `fusepipe plan` is a mention
        monkeypatch.chdir(workflow)
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == 0, f"{command.where}: `{command.text}` fails:\n{result.output[-3000:]}"


def check_make(command: Command, args: list[str], workflow: Path, monkeypatch) -> None:
    proc = subprocess.run(["make", "-n", *args], cwd=REPO, check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{command.where}: `make -n {' '.join(args)}` fails:\n{proc.stderr[-2000:]}"


def check_python(command: Command, args: list[str], workflow: Path, monkeypatch) -> None:
    if args[:1] == ["-m"]:
        assert importlib.util.find_spec(args[1]) is not None, f"{command.where}: no module {args[1]!r}"
        return
    script = REPO / args[0]
    assert script.is_file(), f"{command.where}: `{command.text}`: no file {args[0]}"
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, check=False, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, f"{command.where}: `{args[0]} --help` fails:\n{proc.stderr[-2000:]}"
    for opt in (w for w in args[1:] if w.startswith("--")):
        assert opt in proc.stdout, f"{command.where}: `{command.text}`: {args[0]} has no {opt}"


def check_pip(command: Command, args: list[str], workflow: Path, monkeypatch) -> None:
    match = re.fullmatch(r"install -e \.\[([\w,-]+)\]", " ".join(args))
    assert match, f"{command.where}: `{command.text}`: only `pip install -e \".[extras]\"` is checked"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    missing = set(match.group(1).split(",")) - set(extras)
    assert not missing, f"{command.where}: `{command.text}`: pyproject.toml has no extra {sorted(missing)}"


def check_bash(command: Command, args: list[str], workflow: Path, monkeypatch) -> None:
    """`bash script.sh --opt ...`: the script exists, parses (`bash -n`), and knows each option (in its own text
    or in a Python script it names); running it is its own test's job (e.g. tests/test_gpu_check.py)."""
    script = REPO / args[0]
    assert script.is_file(), f"{command.where}: `{command.text}`: no file {args[0]}"
    proc = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{command.where}: `bash -n {args[0]}`: {proc.stderr}"
    text = script.read_text()
    text += "".join((REPO / p).read_text() for p in set(re.findall(r"[\w/]+\.py", text)) if (REPO / p).is_file())
    for opt in (w for w in args[1:] if w.startswith("--")):
        assert opt in text, f"{command.where}: `{command.text}`: {args[0]} has no {opt}"


def check_export(command: Command, args: list[str], workflow: Path, monkeypatch) -> None:
    assert args and all(ENV.match(a) for a in args), f"{command.where}: `{command.text}`: not `export NAME=value`"


CHECKS = {"snakemake": check_snakemake, "fusepipe": check_fusepipe, "make": check_make, "python": check_python,
          "pip": check_pip, "export": check_export, "bash": check_bash}  # fmt: skip
