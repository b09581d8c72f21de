"""Who is calling: API tokens to users and the farms they may see."""

from __future__ import annotations

import time

from hub import repository
from hub.database import Database
from hub.stream import Viewer

VIEWER_CACHE_S = 10.0
"""How long a token's user and farms are remembered between requests."""

MAX_CACHED_TOKENS = 10_000


class Users:
    """Looks up tokens, with a short cache so a busy dashboard costs no queries.

    A revoked token or a changed membership takes effect within
    ``VIEWER_CACHE_S``.
    """

    def __init__(
        self, database: Database, admin_user_ids: frozenset[int] = frozenset()
    ) -> None:
        self.database = database
        self.admin_user_ids = admin_user_ids
        self._cache: dict[str, tuple[float, Viewer | None]] = {}

    async def viewer(self, token: str) -> Viewer | None:
        """The user of ``token``; None for an unknown or revoked token."""
        cached = self._cache.get(token)
        if cached is not None and time.monotonic() - cached[0] < VIEWER_CACHE_S:
            return cached[1]
        found = await self.database.run(repository.viewer_for_token, token)
        viewer = None
        if found is not None:
            user_id, name, roles = found
            admin = user_id in self.admin_user_ids
            viewer = Viewer(user_id, name, roles, is_admin=admin)
        if len(self._cache) >= MAX_CACHED_TOKENS:
            self._cache.clear()
        self._cache[token] = (time.monotonic(), viewer)
        return viewer
