"""The versioned knowledge store: the only package that talks to the database (SQLModel).

    from locft.store import Store
    with Store.open() as store:                # $LOCFT_HOME/locft.db, migrated on open
        store.add_fact(EditFact("Q?", "A"))    # -> AddResult(status="added", fact_id=1, ...)
        store.active_facts()                   # -> [FactEntry(revision_id, fact_id, EditFact)]
"""

from locft.store.events import EventInfo
from locft.store.fact_import import ImportIssue, ImportSummary
from locft.store.fact_records import (
    AddResult,
    FactCounts,
    FactEntry,
    FactHistory,
    FactInfo,
    FactRevisionInfo,
    PendingFact,
    RevisionResult,
)
from locft.store.promotion import PointerMove, PromotionInfo
from locft.store.rounds import ClaimedRequests, Recovery, RoundInfo, RoundRequestInfo
from locft.store.snapshots import RetentionResult, snapshot_digest
from locft.store.store import Store, StoreSummary
from locft.store.version_records import FactChange, GateResultInfo, VersionDiff, VersionInfo

__all__ = [
    "AddResult", "ClaimedRequests", "EventInfo", "FactChange", "FactCounts", "FactEntry", "FactHistory",
    "FactInfo", "FactRevisionInfo", "GateResultInfo", "ImportIssue", "ImportSummary", "PendingFact",
    "PointerMove", "PromotionInfo", "Recovery", "RetentionResult", "RevisionResult", "RoundInfo",
    "RoundRequestInfo", "Store", "StoreSummary", "VersionDiff", "VersionInfo", "snapshot_digest",
]
