"""`Store`: the knowledge store as one object. `Store.open()` is the way in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from locft.config import StoreConfig, load_config
from locft.errors import StoreError
from locft.home import Home
from locft.store.db import create_db_engine, database_url, migrate, safe_url
from locft.store.events import EventsMixin
from locft.store.fact_import import FactImportMixin
from locft.store.fact_records import FactCounts
from locft.store.facts import FactsMixin
from locft.store.promotion import PromotionMixin
from locft.store.rounds import RoundInfo, RoundsMixin
from locft.store.snapshots import DEFAULT_ORPHAN_MIN_AGE_S, SnapshotsMixin
from locft.store.version_records import VersionInfo
from locft.store.versions import VersionsMixin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreSummary:
    """What `locft status` shows from the database."""

    database: str  # the URL, password hidden
    promoted: VersionInfo
    facts: FactCounts
    versions: dict[str, int]  # state -> count
    last_round: RoundInfo | None
    open_requests: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database, "promoted": self.promoted.to_dict(),
            "facts": {"active": self.facts.active, "pending": self.facts.pending, "retracted": self.facts.retracted},
            "versions": self.versions, "last_round": self.last_round.to_dict() if self.last_round else None,
            "open_round_requests": self.open_requests,
        }


class Store(FactsMixin, FactImportMixin, VersionsMixin, PromotionMixin, RoundsMixin, EventsMixin, SnapshotsMixin):
    """Facts, versions, the promoted pointer, rounds, events and snapshots of one $LOCFT_HOME.

    Every method is one transaction and returns plain dataclasses (nothing tied to a session),
    so a Store can be shared by threads. Close it (or use `with`) to release connections.
    """

    applied_migrations: tuple[str, ...] = ()

    @classmethod
    def open(
        cls,
        home: Home | Path | str | None = None,
        config: StoreConfig | None = None,
        *,
        create: bool = False,
        sweep_orphans: bool = True,
    ) -> Store:
        """Open (and migrate) the store of `home` ($LOCFT_HOME by default).

        `create`: make a new database when there is none (`locft init` does); otherwise a
        missing store is an error that says to run `locft init`. `sweep_orphans`: delete
        snapshot directories without a row (older than an hour; never while a round runs).
        """
        home = home if isinstance(home, Home) else Home.resolve(home)
        if config is None:
            config = load_config(home.root).store
        url = database_url(home, config)
        if config.database_url is None and not create and not home.db_path.exists():
            raise StoreError(
                f"no locft store in {home.root}; run `locft init` first (or set LOCFT_HOME to an existing home)"
            )
        if config.database_url is None:
            home.root.mkdir(parents=True, exist_ok=True)
        engine = create_db_engine(url)
        try:
            applied = migrate(engine, url)
        except BaseException:
            engine.dispose()
            raise
        store = cls(home, config, engine, url)
        store.applied_migrations = tuple(applied)
        if applied:
            log.info("store %s: applied migrations %s", safe_url(url), ", ".join(applied))
        if sweep_orphans and home.snapshots_dir.is_dir() and not store.running_rounds():
            store.sweep_orphan_snapshots(DEFAULT_ORPHAN_MIN_AGE_S)
        return store

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def summary(self) -> StoreSummary:
        versions: dict[str, int] = {}
        for v in self.list_versions():
            versions[v.state] = versions.get(v.state, 0) + 1
        return StoreSummary(
            database=safe_url(self.url), promoted=self.promoted_version(), facts=self.count_facts(),
            versions=versions, last_round=self.last_round(), open_requests=len(self.open_round_requests()),
        )
