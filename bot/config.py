"""The routing file: YAML → validated pydantic models, with errors that point at a line."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
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

from bot.events import EventType, phone_digits

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{2,}$")
_CHANNEL_NAME = re.compile(r"^#[a-z0-9][a-z0-9_\-]{0,79}$")
_USER_OR_GROUP = re.compile(r"^[SUW][A-Z0-9]{2,}$")


def parse_duration(value: object) -> float:
    """'90s', '15m', '1h', '1h30m' → seconds. A bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 15m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.strip())) and value.strip():
        hours, minutes, secs = (int(part or 0) for part in match.groups())
        seconds = float(hours * 3600 + minutes * 60 + secs)
    else:
        raise ValueError(f"{value!r} is not a duration such as 90s, 15m or 1h")
    if seconds <= 0:
        raise ValueError("a duration must be longer than zero")
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


def _event_name(value: object) -> str:
    known = [e.value for e in EventType]
    if value not in known:
        raise ValueError(f"{value!r} is not an event; known events: {', '.join(known)}")
    return str(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Channel = Annotated[str, BeforeValidator(_channel)]
Mention = Annotated[str, BeforeValidator(_mention)]
Responder = Annotated[str, BeforeValidator(_responder)]
IdString = Annotated[str, BeforeValidator(_id_string)]
PhoneDigits = Annotated[str, BeforeValidator(_phone)]
EventName = Annotated[str, BeforeValidator(_event_name)]


class _Strict(BaseModel):
    # A misspelt key in a security team's routing file must be an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Escalation(_Strict):
    channel: Channel
    mention: list[Mention] = Field(default_factory=list)


class Storm(_Strict):
    """Past `threshold` alerts for one channel within `window`, the rest share one summary."""

    # Slack allows about one message a second per channel: 20 a minute stays well inside it.
    threshold: int = Field(default=20, ge=1, le=1000)
    window: Duration = 60.0


class Defaults(_Strict):
    channel: Channel
    mention: list[Mention] = Field(default_factory=list)
    ack_timeout: Duration = 15 * 60.0
    escalation: Escalation
    storm: Storm = Field(default_factory=Storm)


class Team(_Strict):
    channel: Channel | None = None
    mention: list[Mention] | None = None
    responders: list[Responder] | None = None
    ack_timeout: Duration | None = None
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
    waba_ids: list[IdString] | None = None
    phone_numbers: list[PhoneDigits] | None = None
    events: list[EventName] | None = None


class Config(_Strict):
    defaults: Defaults
    teams: dict[str, Team] = Field(default_factory=dict)
    store: StoreSettings = Field(default_factory=StoreSettings)
    routes: list[Route] = Field(default_factory=list)


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


class _LineIndex:
    """Maps a key path such as ('teams', 'payments', 'channel') to its line in the file."""

    def __init__(self, root: yaml.Node) -> None:
        self._lines: dict[tuple[str | int, ...], int] = {}
        self.duplicates: list[tuple[tuple[str | int, ...], int]] = []
        self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple[str | int, ...]) -> None:
        self._lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    self.duplicates.append(((*path, key), key_node.start_mark.line + 1))
                seen.add(key)
                self._lines[(*path, key)] = key_node.start_mark.line + 1
                self._walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*path, index))

    def line_of(self, loc: tuple[str | int, ...]) -> int:
        for end in range(len(loc), -1, -1):
            if (line := self._lines.get(loc[:end])) is not None:
                return line
        return 1


def _validation_problems(
    error: ValidationError, index: _LineIndex, source: str
) -> Iterator[ConfigProblem]:
    for item in error.errors():
        # pydantic puts the Annotated validator's name in loc for unions; keep only real keys.
        loc = tuple(p for p in item["loc"] if isinstance(p, int) or not p.startswith("function-"))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (misspelt?)"
        yield ConfigProblem(source, index.line_of(loc), _where(loc), message)


def _unknown_teams(data: dict[str, Any], index: _LineIndex, source: str) -> Iterator[ConfigProblem]:
    """Read from the raw data, so that a misspelt team is reported beside every other error."""
    teams = data.get("teams")
    known = set(teams) if isinstance(teams, dict) else set()
    routes = data.get("routes")
    for i, route in enumerate(routes if isinstance(routes, list) else []):
        team = route.get("team") if isinstance(route, dict) else None
        if isinstance(team, str) and team not in known:
            yield ConfigProblem(
                source,
                index.line_of(("routes", i, "team")),
                f"routes[{i}].team",
                f"team {team!r} is not defined under teams",
            )


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads an unquoted 00442071460 as octal 76051248: keep such numbers as written."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int | str:  # type: ignore[override]
        text = str(node.value).replace("_", "")
        if len(text.lstrip("+-")) > 1 and text.lstrip("+-").startswith("0"):
            return str(node.value)
        return int(super().construct_yaml_int(node))


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def parse_config(text: str, *, source: str) -> LoadedConfig:
    """Validate the routing file's text; raise ConfigError listing every problem found."""
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            data: Any = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([ConfigProblem(source, line, "yaml", str(exc.problem))]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(source, 1, "yaml", str(exc))]) from exc
    if root is None or not isinstance(data, dict):
        raise ConfigError([ConfigProblem(source, 1, "(top level)", "expected a mapping of keys")])

    index = _LineIndex(root)
    problems = [
        ConfigProblem(source, line, _where(loc), "key given twice")
        for loc, line in index.duplicates
    ]
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, index, source))
    problems.extend(_unknown_teams(data, index, source))
    if problems:
        raise ConfigError(problems)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return LoadedConfig(config=config, source=source, digest=digest)


def load_config(path: Path) -> LoadedConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(path), 1, "file", str(exc))]) from exc
    return parse_config(text, source=str(path))


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

    def reload(self, *, now: float) -> tuple[ReloadResult, ConfigError | None]:
        """Re-read the file; a version that does not validate leaves the one in force alone."""
        try:
            loaded = load_config(Path(self.current.source))
        except ConfigError as exc:
            return ReloadResult.REFUSED, exc
        if loaded.digest == self.current.digest:
            return ReloadResult.UNCHANGED, None
        self.current = loaded
        self.loaded_at = now
        return ReloadResult.APPLIED, None
