"""Every image series of a pre-read study, retrieved from the PACS.

The largest image series first — the one a clinician's "Open from PACS" opens, and the one the
pre-read session shows unless another series holds a stronger finding —, then the others in
series-number order. A series Loupe cannot take (too large for the limits, no pixel data) is
passed over in one sentence and the others are analysed; a PACS that cannot be reached fails
the attempt (the job is retried).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.pacs.client import PacsConnection, PacsError
from agent.pacs.retrieve import RetrievedSeries, retrieve_series
from agent.pacs.search import series_of
from agent.settings import LoupeSettings
from tools.errors import LoupeError


@dataclass(frozen=True)
class StudySeries:
    #: The largest image series first.
    retrieved: list[RetrievedSeries]
    #: One sentence for each image series that could not be taken.
    passed_over: list[str] = field(default_factory=list)


def retrieve_study(connection: PacsConnection, settings: LoupeSettings, study_uid: str) -> StudySeries:
    """Each image series of the study, in the local copy (``retrieve_series``)."""
    images = [s for s in series_of(connection, study_uid) if s.is_image and s.instances > 0]
    if not images:
        return StudySeries([retrieve_series(connection, settings, study_uid)])  # says why there is none
    largest = max(images, key=lambda s: s.instances)  # as retrieve_series chooses
    retrieved = [retrieve_series(connection, settings, study_uid, largest.series_uid)]
    passed_over = []
    for series in images:
        if series is largest:
            continue
        try:
            retrieved.append(retrieve_series(connection, settings, study_uid, series.series_uid))
        except PacsError:
            raise  # the PACS itself: the attempt fails and is retried
        except LoupeError as error:
            passed_over.append(error.message)
    return StudySeries(retrieved, passed_over)
