"""Read the repo's Dockerfile and .dockerignore into plain data for the deployment tests.

Covers the subset of Dockerfile syntax this project uses: parser directives, comments,
line continuations, global ARGs in FROM, multi-stage builds, ENV/ARG expansion, RUN flags
(`--mount=...`), JSON (exec) forms, and Docker's .dockerignore matching rules (the last
matching pattern wins; a pattern also matches every path below a matched directory).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class DockerfileError(Exception):
    """The Dockerfile uses syntax this reader does not understand; extend the reader."""


@dataclass(frozen=True)
class Instruction:
    """One instruction: upper-case keyword, raw argument text, first line number."""

    keyword: str
    text: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (ENTRYPOINT, CMD, VOLUME...)."""
        value = json.loads(self.text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DockerfileError(f"line {self.line}: {self.keyword} is not a JSON string array")
        return [str(v) for v in value]

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        """Split leading `--flag=value` options from the rest (RUN --mount, COPY --from...)."""
        flags: dict[str, str] = {}
        rest = self.text
        while rest.startswith("--"):
            token, _, remainder = rest.partition(" ")
            name, _, value = token[2:].partition("=")
            flags[name] = value
            rest = remainder.lstrip()
        return flags, rest


@dataclass
class Stage:
    """One FROM section of a multi-stage build."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self, initial: Mapping[str, str] | None = None) -> dict[str, str]:
        """ENV values of this stage, expanded in order (later values see earlier ones)."""
        values = dict(initial or {})
        for instruction in self.all("ENV"):
            values.update(parse_env(instruction.text, values))
        return values


@dataclass
class Dockerfile:
    """A parsed Dockerfile: global ARGs and the stages in order."""

    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise DockerfileError(f"no stage named {name!r}")

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def expand(text: str, values: Mapping[str, str]) -> str:
    """Replace $VAR and ${VAR} from `values`; unknown names become empty, as Docker does."""
    return _VAR.sub(lambda m: values.get(m.group("braced") or m.group("plain"), ""), text)


def parse_env(text: str, values: Mapping[str, str]) -> dict[str, str]:
    """`KEY=value KEY2="quoted value"` (the only ENV form we allow) -> expanded pairs."""
    pairs: dict[str, str] = {}
    scope = dict(values)
    for token in shlex.split(text):
        key, sep, value = token.partition("=")
        if not sep:
            raise DockerfileError(f"ENV {text!r}: use the KEY=value form")
        pairs[key] = expand(value, scope)
        scope[key] = pairs[key]
    return pairs


def parse_arg(text: str) -> tuple[str, str]:
    name, _, default = text.partition("=")
    return name.strip(), shlex.split(default)[0] if default.strip() else ""


def logical_lines(source: str) -> Iterator[tuple[int, str]]:
    """(first line number, joined text) for each instruction; comments dropped."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(source.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue  # comments (also inside continuations) and blank continuation lines
        if not stripped:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        yield start, " ".join(part for part in pending if part)
        pending = []
    if pending:
        raise DockerfileError(f"line {start}: continuation runs past the end of the file")


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, rest = text.partition(" ")
        instruction = Instruction(keyword.upper(), rest.strip(), line)
        if instruction.keyword == "FROM":
            words = instruction.text.split()
            base = expand(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3):
                raise DockerfileError(f"line {line}: FROM IMAGE [AS NAME] expected")
            stages.append(Stage(base=base, name=name))
        elif not stages:
            if instruction.keyword != "ARG":
                raise DockerfileError(f"line {line}: only ARG may come before FROM")
            key, value = parse_arg(instruction.text)
            global_args[key] = value
        else:
            stages[-1].instructions.append(instruction)
    if not stages:
        raise DockerfileError(f"{path}: no FROM")
    return Dockerfile(global_args=global_args, stages=stages)


def stage_args(dockerfile: Dockerfile, stage: Stage) -> dict[str, str]:
    """ARG values visible in a stage: `ARG NAME` re-declares a global one with its default."""
    values: dict[str, str] = {}
    for instruction in stage.all("ARG"):
        key, default = parse_arg(instruction.text)
        values[key] = default or dockerfile.global_args.get(key, "")
    return values


# --- .dockerignore ---------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char in "[]\\":
            raise DockerfileError(f".dockerignore pattern {pattern!r}: classes/escapes unsupported")
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class IgnoreRule:
    pattern: str
    regex: re.Pattern[str]
    exclude: bool

    def may_include_below(self, directory: str) -> bool:
        """Could this `!` rule re-include something under an ignored `directory`?"""
        if self.exclude:
            return False
        return any(c in self.pattern for c in "*?") or self.pattern.startswith(directory + "/")


def read_dockerignore(path: Path) -> list[IgnoreRule]:
    rules: list[IgnoreRule] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append(IgnoreRule(pattern=pattern, regex=_pattern_regex(pattern), exclude=exclude))
    return rules


def is_ignored(relative: str, rules: list[IgnoreRule]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for rule in rules:
        if any(rule.regex.match(prefix) for prefix in prefixes):
            ignored = rule.exclude
    return ignored


def build_context_files(root: Path, rules: list[IgnoreRule]) -> list[str]:
    """Relative paths of the files `docker build` would send from `root`."""
    files: list[str] = []
    for current, dirs, names in os.walk(root):
        base = Path(current).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        # Skip ignored directories (.venv, .git...) that no `!` rule reaches into.
        dirs[:] = [
            d
            for d in dirs
            if not is_ignored(prefix + d, rules)
            or any(rule.may_include_below(prefix + d) for rule in rules)
        ]
        for name in names:
            relative = prefix + name
            if not (Path(current) / name).is_symlink() and not is_ignored(relative, rules):
                files.append(relative)
    return sorted(files)
