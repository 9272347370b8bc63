"""Reading YAML nodes with their positions, so every problem names file:line:col and field.

yaml.safe_load drops marks, so policies are composed into nodes (yaml.compose, safe
loader: no object construction, so a policy never executes code) and read here field by
field. Problems are collected rather than raised at the first one: an operator fixing a
file wants every mistake in one run.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

import yaml

from drctl.model.errors import ConfigError

T = TypeVar("T")
D = TypeVar("D")  # a default may differ in type from what the reader returns (None, (), {})
_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_TYPE_NAMES = {
    yaml.MappingNode: "a mapping",
    yaml.SequenceNode: "a list",
    yaml.ScalarNode: "a scalar",
}


@dataclass(frozen=True)
class Problem:
    filename: str
    line: int  # 1-based
    column: int  # 1-based
    path: str  # field path, e.g. "rules[0].action"
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.filename}:{self.line}:{self.column}: {where}{self.message}"


class PolicyError(ConfigError):
    """One or more problems in a policy file; the message has one line per problem."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        # in file order, as an editor's problem list would show them
        self.problems = tuple(sorted(problems, key=lambda p: (p.filename, p.line, p.column)))
        super().__init__("\n".join(str(p) for p in self.problems))


class Invalid(Exception):
    """Internal: this field is bad and has been reported; skip what depends on it."""


@dataclass
class Reader:
    """Collects problems while a policy is read. Lives for one compile only."""

    filename: str
    problems: list[Problem] = field(default_factory=list)

    def report(self, node: yaml.Node | None, path: str, message: str) -> None:
        line, col = (node.start_mark.line + 1, node.start_mark.column + 1) if node else (1, 1)
        self.problems.append(Problem(self.filename, line, col, path, message))

    def fail(self, node: yaml.Node | None, path: str, message: str) -> Invalid:
        self.report(node, path, message)
        return Invalid()

    def attempt(self, fn: Callable[[], T], default: D) -> T | D:
        """Run one field's reader; on a reported problem, go on with `default`."""
        try:
            return fn()
        except Invalid:
            return default

    # ------------------------------------------------------------ structure

    def mapping(self, node: yaml.Node, path: str, allowed: Iterable[str]) -> dict[str, yaml.Node]:
        """A mapping with string keys from `allowed`; unknown keys reported with a suggestion."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, f"expected a mapping, got {describe(node)}")
        allowed = tuple(allowed)
        out: dict[str, yaml.Node] = {}
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            key_path = join(path, str(key))
            if not isinstance(key, str) or key_node.tag != _STD + "str":
                self.report(key_node, path, f"keys must be plain words, got {describe(key_node)}")
            elif key in out:
                self.report(key_node, key_path, "appears twice")
            elif key not in allowed:
                self.report(key_node, key_path, f"unknown key{suggest(key, allowed)}")
            else:
                out[key] = value
        return out

    def sequence(self, node: yaml.Node, path: str, *, scalar_ok: bool = False) -> list[yaml.Node]:
        """A list; with scalar_ok a single scalar stands for a list of one."""
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if scalar_ok and isinstance(node, yaml.ScalarNode) and not is_null(node):
            return [node]
        raise self.fail(node, path, f"expected a list, got {describe(node)}")

    def each(self, node: yaml.Node, path: str, read: Callable[[yaml.Node, str], T],
             *, scalar_ok: bool = False) -> list[T]:
        """Read every item of a list, reporting each bad item and keeping the good ones."""
        out: list[T] = []
        single = not isinstance(node, yaml.SequenceNode)  # a scalar standing for a list of one
        for i, item in enumerate(self.sequence(node, path, scalar_ok=scalar_ok)):
            item_path = path if single else f"{path}[{i}]"
            try:
                out.append(read(item, item_path))
            except Invalid:
                pass
        return out

    # ------------------------------------------------------------ scalars

    def string(self, node: yaml.Node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or is_null(node):
            raise self.fail(node, path, f"expected a string, got {describe(node)}")
        return str(node.value)

    def word(self, node: yaml.Node, path: str) -> str:
        """A non-empty string without surrounding space (names, label keys)."""
        text = self.string(node, path)
        if not text or text != text.strip():
            raise self.fail(node, path, f"expected a non-empty name, got {text!r}")
        return text

    def boolean(self, node: yaml.Node, path: str) -> bool:
        if isinstance(node, yaml.ScalarNode) and node.tag == _STD + "bool":
            return node.value.lower() in ("true", "yes", "on")
        raise self.fail(node, path, f"expected true or false, got {describe(node)}")

    def integer(self, node: yaml.Node, path: str, *, minimum: int = 0, maximum: int = 1_000_000) -> int:
        if isinstance(node, yaml.ScalarNode) and node.tag == _STD + "int":
            try:
                value = int(node.value.replace("_", ""), 0)
            except ValueError:
                value = None
            if value is not None and minimum <= value <= maximum:
                return value
            raise self.fail(node, path, f"expected an integer from {minimum} to {maximum}, got {node.value}")
        raise self.fail(node, path, f"expected an integer, got {describe(node)}")

    def choice(self, node: yaml.Node, path: str, choices: Iterable[str]) -> str:
        choices = tuple(choices)
        text = self.string(node, path)
        if text not in choices:
            hint = suggest(text, choices) or f" (one of: {', '.join(choices)})"
            raise self.fail(node, path, f"unknown value {text!r}{hint}")
        return text

    def parsed(self, node: yaml.Node, path: str, parse: Callable[[str], T]) -> T:
        """A string field parsed by a units parser (duration, size, percent, window)."""
        text = self.string(node, path)
        try:
            return parse(text)
        except ValueError as e:
            raise self.fail(node, path, str(e)) from None


# ---------------------------------------------------------------- helpers


def compose(text: str, reader: Reader) -> yaml.Node | None:
    """Compose YAML into nodes, turning every parser failure into a reported problem."""
    try:
        if _too_deep(text):
            reader.problems.append(Problem(reader.filename, 1, 1, "", f"invalid YAML: nested more than {MAX_DEPTH} levels deep"))
            return None
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        reader.problems.append(Problem(reader.filename, line, col, "", f"invalid YAML: {what}"))
        return None
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        # ReaderError (control characters), too-deep nesting, and the odd ValueError
        # PyYAML lets out on malformed escapes all mean the same thing to an operator.
        msg = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0]
        reader.problems.append(Problem(reader.filename, 1, 1, "", f"invalid YAML: {msg}"))
        return None
    return root if root is None else _check_plain(root, reader)


MAX_DEPTH = 64  # a policy needs about 6; PyYAML's composer recurses, and slowly fails deep down


def _too_deep(text: str) -> bool:
    """Check nesting on the event stream (PyYAML's parser is iterative) before composing."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return False


def _check_plain(root: yaml.Node, reader: Reader) -> yaml.Node | None:
    """Reject tags and aliases: policies are plain data, reviewed as written."""
    seen: set[int] = set()
    stack = [root]
    ok = True
    while stack:
        node = stack.pop()
        if id(node) in seen:
            # an alias re-uses a node; refusing them also rules out alias bombs and cycles
            reader.report(node, "", "YAML aliases (*name) are not supported: write the value out")
            return None
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            ok = _check_tag(node, node.tag in _SCALAR_TAGS, reader) and ok
        elif isinstance(node, yaml.SequenceNode):
            ok = _check_tag(node, node.tag == _STD + "seq", reader) and ok
            stack.extend(reversed(node.value))
        else:
            ok = _check_tag(node, node.tag == _STD + "map", reader) and ok
            for k, v in reversed(node.value):
                stack.extend((v, k))
    return root if ok else None


def _check_tag(node: yaml.Node, allowed: bool, reader: Reader) -> bool:
    if not allowed:
        reader.report(node, "", f"YAML tag {node.tag!r} is not allowed: a policy is plain data")
    return allowed


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _STD + "null"


def describe(node: yaml.Node | None) -> str:
    if node is None or is_null(node):
        return "nothing"
    if isinstance(node, yaml.ScalarNode):
        kind = node.tag.removeprefix(_STD)
        return f"{'a string' if kind == 'str' else 'a ' + kind} {_short(node.value)!r}"
    return _TYPE_NAMES[type(node)]


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid word, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
