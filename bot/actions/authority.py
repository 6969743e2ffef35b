"""Who may act on an alert: the responders it was routed with, and its team's now."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from bot.config import Config
from bot.events import Alert, Responders
from bot.routing import team_destination
from bot.slack import SlackCallError, SlackGateway

log = logging.getLogger(__name__)

GROUP_CACHE_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class Authority:
    """Who may act on an alert now: whoever is in every one of `lists`."""

    lists: tuple[Responders, ...]
    basis: str  # which lists applied, for the audit and the logs


def authority_for(alert: Alert, config: Config) -> Authority | None:
    """The responders the alert was routed with, narrowed by its team's responders in the file
    in force: an edit of the routing file may tighten who may act, never loosen it. None: the
    alert predates kept responders and its team is gone from the file, so nobody may act."""
    lists: list[Responders] = []
    basis: list[str] = []
    if alert.responders is not None:
        lists.append(alert.responders)
        basis.append(f"responders as routed: {alert.responders.describe()}")
    if alert.team is not None and alert.team in config.teams:
        now = Responders(team_destination(alert.team, config).responders)
        lists.append(now)
        basis.append(f"team {alert.team} in the routing file now: {now.describe()}")
    elif alert.team is None and alert.responders is None:
        lists.append(Responders(None))  # routed to the defaults, which name no responders
        basis.append("defaults: anyone")
    if not lists:
        return None
    return Authority(tuple(lists), "; ".join(basis))


class ResponderCheck:
    """Is a user in a responders list? User groups resolved through Slack and cached."""

    def __init__(self, slack: SlackGateway) -> None:
        self._slack = slack
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}

    async def may_act(self, user_id: str, authority: Authority) -> bool:
        for responders in authority.lists:
            if not await self._listed(user_id, responders):
                return False
        return True

    async def _listed(self, user_id: str, responders: Responders) -> bool:
        if responders.ids is None or user_id in responders.ids:
            return True
        for group in (r for r in responders.ids if r.startswith("S")):
            if user_id in await self._members(group):
                return True
        return False

    async def _members(self, group: str) -> frozenset[str]:
        cached = self._groups.get(group)
        if cached and time.monotonic() - cached[0] < GROUP_CACHE_SECONDS:
            return cached[1]
        try:
            members = frozenset(await self._slack.usergroup_members(group))
        except SlackCallError as exc:
            if cached:  # a stale list beats locking every responder out during a Slack hiccup
                log.warning("user group %s not refreshed, using cached members: %s", group, exc)
                return cached[1]
            raise
        self._groups[group] = (time.monotonic(), members)
        return members
