"""The routing file: YAML → validated pydantic models, with errors that point at a line."""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from bot.catalog import ALERTED_FIELDS, IGNORED_FIELDS, KNOWN_EVENTS, Severity
from bot.events import phone_digits

try:
    # libyaml: several times faster on a large file; the same YAML rules and the same nodes.
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # a PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{2,}$")
_CHANNEL_NAME = re.compile(r"^#[a-z0-9][a-z0-9_\-]{0,79}$")
_USER_OR_GROUP = re.compile(r"^[SUW][A-Z0-9]{2,}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def parse_duration(value: object) -> float:
    """'90s', '15m', '1h', '1h30m' → seconds. A bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 15m or 1h")
    if isinstance(value, int | float):
        whole: int | float = value
    elif isinstance(value, str) and (match := _DURATION.match(value.strip())) and value.strip():
        hours, minutes, secs = (int(part or 0) for part in match.groups())
        whole = hours * 3600 + minutes * 60 + secs
    else:
        raise ValueError(f"{value!r} is not a duration such as 90s, 15m or 1h")
    try:
        seconds = float(whole)
    except OverflowError:  # an integer no float holds
        seconds = math.inf
    if not math.isfinite(seconds):  # YAML's .inf and .nan: no deadline can be made of them
        raise ValueError("a duration must be a finite number of seconds")
    if seconds <= 0:
        raise ValueError("a duration must be longer than zero")
    return seconds


# A reminder more often than this is noise that teaches people to ignore pinwatch.
MIN_REMIND_EVERY = 60.0


def _reminder_interval(value: object) -> float:
    seconds = parse_duration(value)
    if seconds < MIN_REMIND_EVERY:
        raise ValueError(f"{value!r} is too often for reminders: at least every 1m")
    return seconds


def _channel(value: object) -> str:
    if not isinstance(value, str) or not (_CHANNEL_ID.match(value) or _CHANNEL_NAME.match(value)):
        raise ValueError(
            f"{value!r} is not a Slack channel: use an ID such as C0PAYMENTS or a #lowercase-name"
        )
    return value


def _mention(value: object) -> str:
    if value == "here" or (isinstance(value, str) and _USER_OR_GROUP.match(value)):
        return value
    raise ValueError(
        f'{value!r} is not a mention: use a user group (S…) or user (U…, W…) ID, or "here"'
    )


def _responder(value: object) -> str:
    if isinstance(value, str) and _USER_OR_GROUP.match(value):
        return value
    raise ValueError(f"{value!r} is not a responder: use a user group (S…) or user (U…, W…) ID")


_ASCII_DIGITS = re.compile(r"[0-9]+")


def _foreign_digits(text: str) -> str:
    """Digits other than 0-9 (fullwidth, Arabic-Indic, …): Meta sends ASCII, so they never match."""
    return "".join(ch for ch in text if ch.isnumeric() and not ch.isascii())


def _id_string(value: object) -> str:
    """YAML reads an unquoted 102290129340398 as a number; an ID is a string of digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _ASCII_DIGITS.fullmatch(value.strip()):
        foreign = _foreign_digits(value) if isinstance(value, str) else ""
        if foreign:
            raise ValueError(f"{value!r} is not a numeric ID: use the digits 0-9, not {foreign!r}")
        raise ValueError(f"{value!r} is not a numeric ID")
    return value.strip()


def _phone(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and (foreign := _foreign_digits(value)):
        raise ValueError(f"{value!r} is not a phone number: use the digits 0-9, not {foreign!r}")
    if not isinstance(value, str) or len(phone_digits(value)) < 5:
        raise ValueError(f"{value!r} is not a phone number")
    return phone_digits(value)


def _closest(value: str, known: tuple[str, ...]) -> list[str]:
    """Names the misspelt one begins, then those nearly as close as the closest (if that one
    is close at all): at most three."""
    scored = sorted(
        ((difflib.SequenceMatcher(None, value, name).ratio(), name) for name in known),
        reverse=True,
    )
    best = scored[0][0] if scored else 0.0
    close = [name for ratio, name in scored[:3] if ratio >= max(0.6, best - 0.05)]
    begun = [name for name in known if len(value) >= 4 and name.startswith(value)]
    return list(dict.fromkeys(begun + close))[:3]


def _suggestion(value: object, known: tuple[str, ...], kind: str) -> str:
    """The known names closest to a misspelt one, or all of them when none is close."""
    close = _closest(value, known) if isinstance(value, str) else []
    if close:
        return f"did you mean {' or '.join(close)}?"
    return f"known {kind}: {', '.join(sorted(known))}"


def _event_name(value: object) -> str:
    if value not in KNOWN_EVENTS:
        raise ValueError(f"{value!r} is not an event; {_suggestion(value, KNOWN_EVENTS, 'events')}")
    return str(value)


def _field_name(value: object) -> str:
    if value in ALERTED_FIELDS:
        return str(value)
    if value in IGNORED_FIELDS:
        raise ValueError(
            f"{value!r} is a field pinwatch ignores (message traffic and the like): "
            f"known fields: {', '.join(ALERTED_FIELDS)}"
        )
    raise ValueError(
        f"{value!r} is not a webhook field; {_suggestion(value, ALERTED_FIELDS, 'fields')}"
    )


def _severity(value: object) -> Severity:
    if value is False:  # YAML 1.1 reads an unquoted `off` as false
        return Severity.OFF
    if isinstance(value, str) and value in set(Severity):
        return Severity(value)
    raise ValueError(f"{value!r} is not a severity: use critical, high, info or off")


def _looks_like_a_key(text: str) -> bool:
    """PagerDuty's integration keys are 32 letters and digits; a variable's name has words."""
    return (
        len(text) >= 20
        and text.isascii()
        and text.isalnum()
        and any(ch.isdigit() for ch in text)
        and any(ch.isalpha() for ch in text)
    )


def _env_name(value: object) -> str:
    """The name of the environment variable holding a secret: never the secret itself, and
    never quoted back when it may be one."""
    if not isinstance(value, str):
        raise ValueError("expected the name of an environment variable, such as PD_PAYMENTS_KEY")
    if _looks_like_a_key(value.strip()):
        raise ValueError(
            "this looks like a PagerDuty routing key, not the name of the environment variable "
            "holding it (the value is not shown here): put the key in the environment, e.g. "
            "PD_PAYMENTS_KEY=…, write that name here, and rotate the key if this file was shared"
        )
    if _ENV_NAME.match(value):
        return value
    # A long one may be a secret of another shape: not quoted either.
    shown = repr(value) if len(value) < 20 else f"a value of {len(value)} characters"
    how = "letters, digits and _, not starting with a digit"
    if value.startswith("$"):
        how = f"the name alone, without the $ ({how})"
    raise ValueError(f"{shown} is not an environment variable name: write {how}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
ReminderInterval = Annotated[float, BeforeValidator(_reminder_interval)]
Channel = Annotated[str, BeforeValidator(_channel)]
Mention = Annotated[str, BeforeValidator(_mention)]
Responder = Annotated[str, BeforeValidator(_responder)]
IdString = Annotated[str, BeforeValidator(_id_string)]
PhoneDigits = Annotated[str, BeforeValidator(_phone)]
EventName = Annotated[str, BeforeValidator(_event_name)]
FieldName = Annotated[str, BeforeValidator(_field_name)]
AlertSeverity = Annotated[Severity, BeforeValidator(_severity)]
EnvName = Annotated[str, BeforeValidator(_env_name)]


class _Strict(BaseModel):
    # A misspelt key in a security team's routing file must be an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PagerDuty(_Strict):
    """Where an escalation also pages: a PagerDuty service's Events API v2 integration."""

    # The key is a secret: the routing file names the variable holding it, never the key.
    routing_key_env: EnvName


class Escalation(_Strict):
    channel: Channel
    mention: list[Mention] = Field(default_factory=list)
    pagerduty: PagerDuty | None = None


class Storm(_Strict):
    """Past `threshold` alerts for one channel within `window`, the rest share one summary."""

    # Slack allows about one message a second per channel: 20 a minute stays well inside it.
    threshold: int = Field(default=20, ge=1, le=1000)
    window: Duration = 60.0


class Defaults(_Strict):
    channel: Channel
    mention: list[Mention] = Field(default_factory=list)
    # Critical and high alerts not acknowledged within this are escalated.
    ack_timeout: Duration = 15 * 60.0
    # How recent a reset request must be for a success on the same WABA and route to thread under
    # it; an older request is another story, so the success stands on its own.
    correlation_window: Duration = 24 * 3600.0
    # An acknowledged alert not yet resolved is reminded of in its thread this often.
    remind_every: ReminderInterval = 4 * 3600.0
    escalation: Escalation
    storm: Storm = Field(default_factory=Storm)


class Team(_Strict):
    channel: Channel | None = None
    mention: list[Mention] | None = None
    responders: list[Responder] | None = None
    ack_timeout: Duration | None = None
    correlation_window: Duration | None = None
    remind_every: ReminderInterval | None = None
    escalation: Escalation | None = None


class StoreSettings(_Strict):
    path: str = "pinwatch.db"

    @field_validator("path")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the store path must not be empty")
        return value


class Route(_Strict):
    team: str
    fields: list[FieldName] | None = None
    waba_ids: list[IdString] | None = None
    phone_numbers: list[PhoneDigits] | None = None
    events: list[EventName] | None = None


class Config(_Strict):
    defaults: Defaults
    teams: dict[str, Team] = Field(default_factory=dict)
    store: StoreSettings = Field(default_factory=StoreSettings)
    routes: list[Route] = Field(default_factory=list)
    # Event name → the severity its alerts get instead of the default ("off": stored, counted,
    # never posted).
    alerts: dict[EventName, AlertSeverity] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    source: str
    line: int
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.where}: {self.what}"


class ConfigError(Exception):
    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[ConfigProblem]]]:
        # A reload parses in a process of its own and the error comes back pickled.
        return ConfigError, (self.problems,)


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    source: str
    digest: str  # names the version in force, in /readyz and the logs

    def summary(self) -> str:
        c = self.config
        return (
            f"{self.source}: ok ({len(c.teams)} teams, {len(c.routes)} routes, "
            f"default channel {c.defaults.channel}, version {self.digest})"
        )


def _where(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


_Loc = tuple[str | int, ...]
_MERGE = "tag:yaml.org,2002:merge"
# Aliases may repeat at most this many nodes, or as many as the file writes out if that is more:
# enough for `<<: *team_defaults` or a shared mention list on every route, while a few hundred
# bytes of nested aliases (an "alias bomb") would otherwise expand to billions of nodes before
# any validation could refuse them.
ALIAS_ALLOWANCE = 10_000


def _parts(node: yaml.Node) -> list[tuple[str | int, yaml.Node]]:
    """A node's children, each with the key or index it is under (a key node: its own key)."""
    if isinstance(node, yaml.MappingNode):
        return [(str(k.value), n) for k, v in node.value for n in (k, v)]
    if isinstance(node, yaml.SequenceNode):
        return list(enumerate(node.value))
    return []


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


class _Document:
    """The file's node graph, before construction: an alias is the very node it names.

    Everything here visits each node once, however often aliases repeat it, so a hostile file
    costs time in proportion to its length, not to what its aliases expand to.
    """

    def __init__(self, root: yaml.Node) -> None:
        self.root = root
        self.written = 0  # nodes the file writes out: a list or mapping that aliases repeat, once
        self.mappings: list[yaml.MappingNode] = []  # each once, in the order the file has them
        self.expanded: dict[int, int] = {}  # id of a collection → nodes with aliases expanded
        self.cycle: yaml.Node | None = None  # a node an alias inside it names
        self._entries: dict[int, dict[str, tuple[int, yaml.Node]]] = {}
        self._measure()

    def _measure(self) -> None:
        # Iterative, not recursive: nesting depth is the file's to choose. Scalars, most of the
        # nodes, are counted where they stand and never stacked.
        open_nodes: set[int] = set()
        stack: list[tuple[yaml.Node, bool]] = [(self.root, False)]
        while stack:
            node, done = stack.pop()
            children = _children(node)
            if done:
                open_nodes.discard(id(node))
                self.expanded[id(node)] = 1 + sum(self.size_of(child) for child in children)
                continue
            if id(node) in self.expanded:
                continue
            if id(node) in open_nodes:
                self.cycle = node
                return
            open_nodes.add(id(node))
            self.written += 1
            if isinstance(node, yaml.MappingNode):
                self.mappings.append(node)
            stack.append((node, True))
            for child in reversed(children):
                if isinstance(child, yaml.ScalarNode):
                    self.written += 1
                else:
                    stack.append((child, False))

    def size_of(self, node: yaml.Node) -> int:
        return 1 if isinstance(node, yaml.ScalarNode) else self.expanded[id(node)]

    def path_of(self, target: yaml.Node) -> _Loc:
        """Where the file first writes the node (for an alias: where its anchor is).

        Only asked for a problem to report, so it searches rather than keeping a map.
        """
        seen: set[int] = set()
        stack: list[tuple[yaml.Node, _Loc]] = [(self.root, ())]
        while stack:
            node, path = stack.pop()
            if node is target:
                return path
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.extend((child, (*path, part)) for part, child in reversed(_parts(node)))
        return ()

    def too_expanded(self, limit: int) -> yaml.Node | None:
        """The innermost node whose aliases expand it past ``limit`` nodes, if the root's do."""
        if self.size_of(self.root) <= limit:
            return None
        node = self.root
        while True:
            child = max(_children(node), key=self.size_of, default=None)
            if child is None or self.size_of(child) <= limit:
                return node
            node = child

    def duplicates(self) -> Iterator[tuple[_Loc, int]]:
        for node in self.mappings:
            seen: set[str] = set()
            for key_node, _ in node.value:
                key = str(key_node.value)
                if key in seen and key_node.tag != _MERGE:
                    yield (*self.path_of(node), key), key_node.start_mark.line + 1
                seen.add(key)

    def _entries_of(self, node: yaml.MappingNode) -> dict[str, tuple[int, yaml.Node]]:
        """Key → (its line, its value); of a key given twice, the last, as construction does.

        Once constructed, a mapping's `<<` merges are among its own pairs (PyYAML puts the
        merged ones first), so a key it overrides points at the override.
        """
        if (entries := self._entries.get(id(node))) is None:
            entries = {str(k.value): (k.start_mark.line + 1, v) for k, v in node.value}
            self._entries[id(node)] = entries
        return entries

    def line_of(self, loc: _Loc) -> int:
        """The line of the deepest part of ``loc`` the file writes (a key: the key's line)."""
        node = self.root
        line = node.start_mark.line + 1
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                entry = self._entries_of(node).get(str(part))
                if entry is None:
                    break
                line, node = entry
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line


def _alias_problems(document: _Document, source: str) -> list[ConfigProblem]:
    if document.cycle is not None:
        path = document.path_of(document.cycle)
        what = "an alias inside this node names the node itself"
        return [ConfigProblem(source, document.line_of(path), _where(path), what)]
    written = document.written
    limit = written + max(ALIAS_ALLOWANCE, written)
    node = document.too_expanded(limit)
    if node is None:
        return []
    path = document.path_of(node)
    what = (
        f"aliases expand this to more than {limit:,} nodes (the whole file writes {written:,}):"
        " refused, as an alias bomb would be"
    )
    return [ConfigProblem(source, document.line_of(path), _where(path), what)]


def _validation_problems(
    error: ValidationError, document: _Document, source: str
) -> Iterator[ConfigProblem]:
    for item in error.errors():
        # pydantic puts the Annotated validator's name in loc for unions, and "[key]" after a
        # mapping key it refused; keep only real keys.
        loc = tuple(
            p
            for p in item["loc"]
            if isinstance(p, int) or not (p.startswith("function-") or p == "[key]")
        )
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (misspelt?)"
        yield ConfigProblem(source, document.line_of(loc), _where(loc), message)


def _unknown_teams(
    data: dict[str, Any], document: _Document, source: str
) -> Iterator[ConfigProblem]:
    """Read from the raw data, so that a misspelt team is reported beside every other error."""
    teams = data.get("teams")
    known = set(teams) if isinstance(teams, dict) else set()
    routes = data.get("routes")
    for i, route in enumerate(routes if isinstance(routes, list) else []):
        team = route.get("team") if isinstance(route, dict) else None
        if isinstance(team, str) and team not in known:
            yield ConfigProblem(
                source,
                document.line_of(("routes", i, "team")),
                f"routes[{i}].team",
                f"team {team!r} is not defined under teams",
            )


class _Loader(_SafeLoader):
    """YAML 1.1 reads an unquoted 00442071460 as octal 76051248: keep such numbers as written."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int | str:  # type: ignore[override]
        text = str(node.value).replace("_", "")
        if len(text.lstrip("+-")) > 1 and text.lstrip("+-").startswith("0"):
            return str(node.value)
        try:
            return int(super().construct_yaml_int(node))
        except ValueError as exc:  # longer than Python reads (4,300 digits)
            raise yaml.constructor.ConstructorError(
                problem=f"an integer of {len(text.lstrip('+-'))} digits is too long",
                problem_mark=node.start_mark,
            ) from exc


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _yaml_problem(exc: yaml.YAMLError, source: str) -> ConfigProblem:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return ConfigProblem(source, 1, "yaml", str(exc))
    mark = exc.problem_mark or exc.context_mark
    what = str(exc.problem)
    if exc.context and exc.context_mark and exc.context_mark is not mark:
        what += f" ({exc.context} from line {exc.context_mark.line + 1})"
    return ConfigProblem(source, mark.line + 1 if mark else 1, "yaml", what)


def _not_a_mapping(source: str) -> ConfigError:
    return ConfigError([ConfigProblem(source, 1, "(top level)", "expected a mapping of keys")])


def _read_yaml(text: str, source: str) -> tuple[_Document, dict[str, Any], list[ConfigProblem]]:
    """Compose, check aliases and keys on the nodes, and only then construct Python values."""
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                raise _not_a_mapping(source)
            document = _Document(root)
            if problems := _alias_problems(document, source):
                raise ConfigError(problems)
            duplicates = [
                ConfigProblem(source, line, _where(loc), "key given twice")
                for loc, line in document.duplicates()
            ]
            data = loader.construct_document(root)
            if not isinstance(data, dict):
                raise _not_a_mapping(source)
            return document, data, duplicates
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, source)]) from exc


_ROUTING_KEY_ENV = ("escalation", "pagerduty", "routing_key_env")


def routing_key_envs(config: Config) -> dict[str, list[tuple[str, ...]]]:
    """Each environment variable the file names for a PagerDuty routing key → where it does
    (``("teams", "payments", "escalation", "pagerduty", "routing_key_env")``), in file order."""
    named: dict[str, list[tuple[str, ...]]] = {}
    escalations = [(("defaults",), config.defaults.escalation)] + [
        (("teams", name), team.escalation) for name, team in config.teams.items()
    ]
    for loc, escalation in escalations:
        if escalation is not None and escalation.pagerduty is not None:
            named.setdefault(escalation.pagerduty.routing_key_env, []).append(
                (*loc, *_ROUTING_KEY_ENV)
            )
    return named


def missing_routing_keys(config: Config, environ: Mapping[str, str]) -> list[str]:
    """The variables the file names for PagerDuty routing keys that are unset or empty."""
    return [name for name in routing_key_envs(config) if not environ.get(name, "").strip()]


def _missing_key_problems(
    config: Config, environ: Mapping[str, str], document: _Document, source: str
) -> Iterator[ConfigProblem]:
    missing = set(missing_routing_keys(config, environ))
    for name, places in routing_key_envs(config).items():
        for loc in places if name in missing else []:
            whose = "the defaults" if loc[0] == "defaults" else f"team {loc[1]}"
            yield ConfigProblem(
                source,
                document.line_of(loc),
                _where(loc),
                f"environment variable {name} is not set: it must hold the PagerDuty routing key "
                f"of {whose}",
            )


def parse_config(
    text: str, *, source: str, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Validate the routing file's text; raise ConfigError listing every problem found.

    With ``environ``, a PagerDuty routing key variable it does not set is a problem too: the
    service must not start, or take a new version, that would page nobody.
    """
    document, data, problems = _read_yaml(text, source)
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, document, source))
    problems.extend(_unknown_teams(data, document, source))
    if config is not None and environ is not None:
        problems.extend(_missing_key_problems(config, environ, document, source))
    if problems:
        raise ConfigError(problems)
    assert config is not None
    return LoadedConfig(config=config, source=source, digest=digest_of(text))


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(path), 1, "file", str(exc))]) from exc


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    return parse_config(_read_text(path), source=str(path), environ=environ)


def read_if_changed(
    source: str, *, digest: str, environ: Mapping[str, str] | None = None
) -> LoadedConfig | None:
    """The file as it is now, or None if its text is still version ``digest``."""
    text = _read_text(Path(source))
    if digest_of(text) == digest:
        return None  # touched or signalled, not edited: no need to parse it again
    return parse_config(text, source=source, environ=environ)


class ReloadResult(StrEnum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    REFUSED = "refused"


class LiveConfig:
    """The config in force; a reload swaps it whole, so a reader never sees half of one."""

    def __init__(self, loaded: LoadedConfig, *, loaded_at: float) -> None:
        self.current = loaded
        self.loaded_at = loaded_at

    @property
    def config(self) -> Config:
        return self.current.config

    def apply(self, loaded: LoadedConfig | None, *, now: float) -> ReloadResult:
        if loaded is None:
            return ReloadResult.UNCHANGED
        self.current = loaded
        self.loaded_at = now
        return ReloadResult.APPLIED
