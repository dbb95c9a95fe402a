"""The store: what the proxy keeps in its database, shared by every worker and replica.

- `schema`: the tables (traces, decisions, audits, tool lists, refits, leases);
- `writer`: the records and the queue that writes them without delaying a response;
- `queries`: engines, the schema's creation and migration, reads and small writes.
"""

from .queries import (
    acquire_lease,
    audits_after,
    count_fresh,
    count_sampled,
    count_traces,
    create_engine,
    create_schema,
    decisions_after,
    fresh_cut,
    fresh_traces_after,
    is_fresh,
    iter_traces,
    last_id,
    last_refit,
    latest_tools,
    pending_candidates,
    record_refit,
    refit_attempts,
    refit_history,
    refit_outcomes,
    release_lease,
    served_coverage,
    settle_refit,
    whole_call_tests,
)
from .writer import Audit, Decision, Record, StoreWriter, ToolList, Trace, storable

__all__ = [
    "Audit",
    "Decision",
    "Record",
    "StoreWriter",
    "ToolList",
    "Trace",
    "acquire_lease",
    "audits_after",
    "count_fresh",
    "count_sampled",
    "count_traces",
    "create_engine",
    "create_schema",
    "decisions_after",
    "fresh_cut",
    "fresh_traces_after",
    "is_fresh",
    "iter_traces",
    "last_id",
    "last_refit",
    "latest_tools",
    "pending_candidates",
    "record_refit",
    "refit_attempts",
    "refit_history",
    "refit_outcomes",
    "release_lease",
    "served_coverage",
    "settle_refit",
    "storable",
    "whole_call_tests",
]
