"""Storing analyses in a real PostgreSQL: exactly once, with the capture settled."""

from __future__ import annotations

import numpy as np
import pytest

from farmeye.heatmaps import encode_map
from tests.workers.support import Farm, query, synthetic_photo
from workers.store import (
    AnalysisRecord,
    AnalysisStore,
    StoredAnalysis,
    StoreUnavailable,
    UnknownCapture,
)

VERSION = "test-model/full"
SCORES = {"healthy": 0.1, "coccidiosis": 0.7, "salmonella": 0.1, "newcastle": 0.1}


def done(capture_id: int, label: str = "coccidiosis") -> AnalysisRecord:
    return AnalysisRecord(
        capture_id=capture_id,
        model_version=VERSION,
        status="done",
        label=label,
        scores=SCORES,
        heatmap_map=encode_map(np.eye(7, dtype=np.float32)),
        batch_size=2,
    )


@pytest.fixture
def store(db_url: str):
    store = AnalysisStore(db_url, retry_window_s=5)
    yield store
    store.close()


def test_analysis_is_stored_and_the_capture_settled(db_url: str, store: AnalysisStore):
    """A stored analysis comes back with the capture's farm, coop and device."""
    farm = Farm(db_url)
    (capture_id,) = farm.add_captures([synthetic_photo(1)])
    (result,) = store.save([done(capture_id)])
    assert isinstance(result, StoredAnalysis)
    assert (result.farm_id, result.coop_id, result.device_id) == (
        farm.farm_id,
        farm.coop_id,
        farm.device_id,
    )
    assert (result.status, result.label, result.heatmap) == (
        "done",
        "coccidiosis",
        True,
    )
    assert result.scores == SCORES
    assert query(db_url, "SELECT dispatch_state FROM captures") == [("done",)]


def test_second_result_for_a_capture_keeps_the_first(db_url: str, store: AnalysisStore):
    """A redelivered task meets the stored row and reports it, adding nothing."""
    (capture_id,) = Farm(db_url).add_captures([synthetic_photo(2)])
    store.save([done(capture_id, "coccidiosis")])
    (again,) = store.save([done(capture_id, "salmonella")])
    assert isinstance(again, StoredAnalysis)
    assert again.label == "coccidiosis"
    assert query(db_url, "SELECT count(*) FROM analyses") == [(1,)]


def test_duplicates_in_one_batch_store_one_row(db_url: str, store: AnalysisStore):
    """Two tasks for one capture in the same batch both get the single row."""
    (capture_id,) = Farm(db_url).add_captures([synthetic_photo(3)])
    first, second = store.save([done(capture_id), done(capture_id, "newcastle")])
    assert first == second
    assert query(db_url, "SELECT label FROM analyses") == [("coccidiosis",)]


def test_failure_is_recorded_with_its_reason(db_url: str, store: AnalysisStore):
    """A failed analysis keeps its error and marks the capture failed."""
    (capture_id,) = Farm(db_url).add_captures([synthetic_photo(4)])
    record = AnalysisRecord(
        capture_id, VERSION, "failed", error="photo cannot be analysed", attempts=3
    )
    (result,) = store.save([record])
    assert isinstance(result, StoredAnalysis)
    assert (result.status, result.error, result.label) == (
        "failed",
        "photo cannot be analysed",
        None,
    )
    assert query(db_url, "SELECT status, attempts FROM analyses") == [("failed", 3)]
    assert query(db_url, "SELECT dispatch_state FROM captures") == [("failed",)]


def test_unknown_capture_is_reported_not_stored(db_url: str, store: AnalysisStore):
    """A task for a capture the database lacks stores nothing and says so."""
    (capture_id,) = Farm(db_url).add_captures([synthetic_photo(5)])
    known, unknown = store.save([done(capture_id), done(capture_id + 1000)])
    assert isinstance(known, StoredAnalysis)
    assert isinstance(unknown, UnknownCapture)
    assert query(db_url, "SELECT count(*) FROM analyses") == [(1,)]


def test_unreachable_database_gives_up_after_the_window():
    """With no server, save retries for its window and then raises."""
    store = AnalysisStore(
        "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1", retry_window_s=0.5
    )
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.save([done(1)])
