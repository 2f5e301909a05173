"""One pre-read job: the study's largest image series analysed into a pre-read session.

``run_job`` claims the job in the ledger (``"skipped"`` when it cannot: done, running elsewhere,
gone), retrieves the series from the PACS (``agent.pacs.retrieve.retrieve_series``: the largest
image series, Loupe's own SR / PDF series never among them), and records one turn of a session
owned by ``loupe-preread`` in the session store — the same events, tool calls, images, findings
and report versions a clinician's session has, so the app restores it with nothing recomputed
(``Conversation.resume``, ``workspace.replay``) and a clinician asking "what did you find?"
is answered from the stored findings.

The turn runs ``agent.analysis.analysis_steps`` (every slice of a CT/MR series searched — a
long one in chunks by several workers, ``agent.preread.chunks`` —, the view moved to the
strongest finding, the vision model asked about that slice when a model is configured and the
privacy boundary lets the pixels go, the findings worth a closer look fitted, the figures
rendered) as recorded tool calls, then ``draft_report``. The tools keep every rule
a clinician's draft obeys: no normal-study wording, ``inconclusive`` where the detector's
measured sensitivity for that kind of image is low.

Sessions: each attempt writes ``preread-<job>-<run>-<attempt>``; the sessions of earlier
attempts (a worker killed mid-job) are removed before it starts, and the previous run's session
once a forced re-run is done, so a study has one pre-read session however often it was tried.

With ``LOUPE_PREREAD_SEND=sr,pdf`` the draft is stored in the study as a preliminary automated
result (``agent.preread.results``: UIDs derived from the job key, so a retry stores the same
instances). Failures are one sentence in the ledger: a PACS that cannot be reached (or answers 5xx) is
retried until the job's attempts reach ``MAX_ATTEMPTS``, then the job is ``failed``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Generator, Iterator
from typing import Any, Protocol

import requests

from agent.analysis import analysis_steps
from agent.conversation import Conversation, Turn
from agent.events import AssistantText, Event, ToolStarted, TurnError
from agent.models.factory import make_backend
from agent.pacs.client import PacsConnection, PacsError, PacsNotFoundError
from agent.pacs.search import check_uid, series_of, study
from agent.preread.chunks import ShareChunk, SharedSliceSearch
from agent.preread.ledger import MAX_ATTEMPTS, JobKey, PrereadError, PrereadLedger, lease_kept
from agent.preread.results import kinds_to_send, send_preread
from agent.preread.series import StudySeries, retrieve_study
from agent.samples import session_title
from agent.settings import LoupeSettings
from agent.store.database import Store
from agent.tool_calls import ToolOutcome, execute
from tools.context import ToolContext
from tools.detect_anomalies import DetectAnomaliesOutput
from tools.errors import LoupeError, ModelUnavailableError

log = logging.getLogger(__name__)

#: The owner of every pre-read session: no clinician's.
PREREAD_OWNER = "loupe-preread"
#: The pre-read turn's message, as the session's chat shows it.
PREREAD_MESSAGE = "Pre-read: analyse this study and draft a report."
INTERNAL_ERROR = "Loupe hit an internal error while pre-reading this study; it was not finished."


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def session_id_for(job: dict[str, Any]) -> str:
    return f"preread-{job['job_id']}-{job['run']}-{job['attempts']}"


def run_job(settings: LoupeSettings, job_id: int, worker: str, share: ShareChunk | None = None) -> str:
    """Claim, run and finish job ``job_id``; the state it ends in (``done``, ``failed``,
    ``queued`` when it will be retried), or ``skipped`` when it could not be claimed.
    ``share``: how a long series' chunks reach other workers (Celery's); None: this worker
    searches them all."""
    ledger = PrereadLedger(settings)
    try:
        lease_s = settings.preread_lease_s
        if not ledger.claim(job_id, worker, lease_s):
            return "skipped"
        job = ledger.job(job_id)
        with lease_kept(lambda: ledger.renew(job_id, worker, lease_s), lease_s, f"pre-read job {job_id}"):
            return _run_claimed(settings, ledger, job, worker, share)
    finally:
        ledger.close()


def _run_claimed(settings: LoupeSettings, ledger: PrereadLedger, job: dict[str, Any], worker: str,
                 share: ShareChunk | None) -> str:
    job_id, store = job["job_id"], ledger.store
    for attempt in range(1, job["attempts"]):  # earlier attempts of this run that did not finish
        _remove_session(store, session_id_for(job | {"attempts": attempt}), "an earlier attempt did not finish")
    session_id = session_id_for(job)
    _remove_session(store, session_id, "an earlier attempt did not finish")
    try:
        result = _analyse(settings, ledger, job, session_id, worker, share)
    except LoupeError as error:
        transient = _transient(error)
        retry = transient and job["attempts"] < MAX_ATTEMPTS
        _remove_session(store, session_id, "the pre-read did not finish")
        ledger.fail(job_id, worker, _one_sentence(error.message, job, transient, retry), retry=retry)
        return ledger.job(job_id)["state"]
    except Exception:
        log.exception("pre-read job %s failed unexpectedly", job_id)
        _remove_session(store, session_id, "the pre-read did not finish")
        ledger.fail(job_id, worker, INTERNAL_ERROR, retry=False)
        return ledger.job(job_id)["state"]
    if not ledger.finish(job_id, worker, session_id=session_id, **result):
        _remove_session(store, session_id, "another worker took the job over")
        return "skipped"
    previous = job.get("session_id")
    if previous and previous != session_id:
        _remove_session(store, previous, "a newer pre-read of the study replaced it")
    return "done"


def _one_sentence(message: str, job: dict[str, Any], transient: bool, retry: bool) -> str:
    """The error's sentence, saying which attempt it was when the PACS is worth another try."""
    if not transient:
        return message
    said = message.rstrip().rstrip(".")
    if retry:
        return f"{said} (attempt {job['attempts']} of {MAX_ATTEMPTS}; it will be tried again)."
    return f"{said} (tried {job['attempts']} times)."


def _transient(error: LoupeError) -> bool:
    """The PACS could not be reached, did not answer in time or answered 5xx: worth another try."""
    if not isinstance(error, PacsError) or isinstance(error, PacsNotFoundError):
        return False
    cause = error.__cause__
    if isinstance(cause, (requests.ConnectionError, requests.Timeout)):
        return True
    response = getattr(cause, "response", None)
    return response is not None and response.status_code >= 500


def _remove_session(store: Store, session_id: str, reason: str) -> None:
    if store.exists(session_id, PREREAD_OWNER):
        store.delete(session_id, PREREAD_OWNER)
        store.audit(PREREAD_OWNER, "session_deleted", {"reason": reason}, session_id=session_id)


def _analyse(settings: LoupeSettings, ledger: PrereadLedger, job: dict[str, Any], session_id: str,
             worker: str, share: ShareChunk | None) -> dict[str, Any]:
    """Retrieve, open, analyse and draft into session ``session_id``, and store the draft in the
    study when ``LOUPE_PREREAD_SEND`` says so; what ``ledger.finish`` records."""
    kinds = kinds_to_send(settings.preread_send)  # a wrong setting fails before the work, not after
    series = retrieve_study(PacsConnection(settings), settings, job["study_uid"])
    conversation = Conversation.start(settings, store=ledger.store, owner=PREREAD_OWNER, session_id=session_id,
                                      title="Pre-read")
    submit = None if share is None else (lambda job_id, run, chunk: share(job_id, run, chunk, job["priority"]))
    try:
        shared = SharedSliceSearch(settings, ledger, job, worker, submit)
        conversation.ctx.slice_search = shared
        return _turn(conversation, job, series, kinds, shared)
    finally:
        conversation.ctx.close()


def _turn(conversation: Conversation, job: dict[str, Any], series: StudySeries, kinds: list[str],
          shared: SharedSliceSearch) -> dict[str, Any]:
    """The pre-read turn on the opened conversation, and what the ledger records of it."""
    store, session_id, study_uid = conversation.recorder.store, conversation.session_id, job["study_uid"]
    study_ids: dict[int, str] = {}
    for index in [*range(1, len(series.retrieved)), 0]:  # the largest last: the one shown
        retrieved = series.retrieved[index]
        conversation.open_study(retrieved.folder)
        study_ids[index] = conversation.ctx.current_study_id
        shared.folders[study_ids[index]] = retrieved.folder
        conversation.recorder.audit("study_retrieved_from_pacs", {
            "instances": retrieved.instances, "fetched": retrieved.fetched, "series": retrieved.description,
            "by": "pre-read"})
    # (study id, the series' description), the largest first
    opened = [(study_ids[index], retrieved.description) for index, retrieved in enumerate(series.retrieved)]
    store.rename(session_id, PREREAD_OWNER, f"Pre-read · {session_title(conversation.ctx.view().study)}"[:200])
    backend = PrereadBackend(opened, _model(conversation))
    events = list(conversation.ask(PREREAD_MESSAGE, backend))
    failed = next((e for e in events if isinstance(e, TurnError)), None)
    if backend.error or failed is not None:
        raise LoupeError(backend.error or failed.message)
    findings = sorted(conversation.ctx.findings.values(), key=lambda f: -f.confidence)
    searched = backend.searched
    called = [f for f in findings if f.confidence >= backend.detected.threshold]
    top = findings[0] if findings else None
    notes = [f"assessment: {searched[opened[0][0]].assessment}" if len(opened) == 1 else
             "assessments: " + "; ".join(f"{description}: {searched[study_id].assessment}"
                                         for study_id, description in opened)]
    if shared.note():
        notes.append(shared.note())
    notes += [f"series not analysed: {reason}" for reason in series.passed_over]
    if kinds:
        key = JobKey(study_uid, job["instances"], job["version"])
        stored = send_preread(conversation, key, job["run"], kinds)
        notes.append("stored in the study as a preliminary result: " + ", ".join(s.description for s in stored))
    anomaly = bool(called) or any(d.anomaly_found for d in [*searched.values(), *backend.slice_checks.values()])
    return {"findings": len(called), "anomaly_found": anomaly,
            "top_finding": None if top is None else {"id": top.id, "label": top.label,
                                                     "confidence": round(top.confidence, 4),
                                                     "slice": top.frame + 1},
            "note": "; ".join(notes)}


def _model(conversation: Conversation) -> ModelBackend | None:
    """The configured model backend, if any (``LOUPE_BACKEND`` / a Gemini key / an OpenAI-
    compatible server); one that cannot be set up leaves the pre-read to the offline detector,
    said in the session's audit trail."""
    settings = conversation.settings
    if settings.backend_name == "offline":
        return None
    try:
        return make_backend(settings)
    except ModelUnavailableError as error:
        conversation.recorder.audit("model_not_used", {"reason": error.message, "by": "pre-read"})
        return None


class PrereadBackend:
    """The pre-read's one turn: ``analysis_steps`` as recorded tool calls, then the draft, then
    a short answer in the template's words (checked like every answer)."""

    name = "preread"

    def __init__(self, series: list[tuple[str, str]], model: ModelBackend | None = None) -> None:
        """``series``: (study id, description) of each opened series, the largest first.
        ``model``: a model backend (Gemini, an OpenAI-compatible server) whose vision model
        proposes findings and whose writer words the draft, behind the privacy boundary; the
        steps stay Loupe's own."""
        self.series = series
        self.model = model
        self.error: str | None = None
        #: Each series' search, by study id; ``detected``: that of the series the draft is of.
        self.searched: dict[str, DetectAnomaliesOutput] = {}
        #: The second look at a series' strongest slice, with the vision model, by study id.
        self.slice_checks: dict[str, DetectAnomaliesOutput] = {}
        self.detected: DetectAnomaliesOutput | None = None
        self._calls = 0

    def run_turn(self, conversation: Conversation, turn: Turn) -> Iterator[Event]:
        if self.model is not None:
            self.model.attach(conversation, turn.usage)
        answer = yield from self._steps(conversation, turn)
        conversation.note_exchange(turn.message, answer)
        yield AssistantText(text=answer)

    def _run(self, conversation: Conversation, turn: Turn, name: str, args: dict[str, Any]
             ) -> Generator[Event, None, ToolOutcome]:
        self._calls += 1
        call_id = f"preread-{turn.id}-{self._calls}"
        yield ToolStarted(call_id=call_id, name=name, args=args)
        outcome = execute(conversation.ctx, name, args)
        yield outcome.event(call_id)
        return outcome

    def _steps(self, conversation: Conversation, turn: Turn) -> Generator[Event, None, str]:
        ctx = conversation.ctx
        for study_id, _ in self.series:
            ctx.current_study_id = study_id
            detected = yield from self._analysed(conversation, turn, study_id)
            if detected is None:
                return f"The pre-read could not search this study: {self.error}"
            self.searched[study_id] = detected
        shown = self._strongest(ctx)
        ctx.current_study_id, self.detected = shown, self.searched[shown]
        drafted = yield from self._run(conversation, turn, "draft_report", {})
        if not drafted.ok:
            self.error = drafted.error or "The report could not be drafted."
            return f"The pre-read searched the study but could not draft its report: {self.error}"
        ready = (f"Report draft version {drafted.output['version']} ({drafted.output['status']}) is ready for "
                 "review; it is a preliminary automated result until a physician signs it.")
        said = {study_id: self._said(study_id) for study_id, _ in self.series}
        if len(self.series) == 1:
            return f"Loupe's automated pre-read searched {said[shown]}\n{ready}"
        lines = [f"Loupe's automated pre-read searched the study's {len(self.series)} image series."]
        lines += [f"- {description}: searched {said[study_id]}" for study_id, description in self.series]
        drafted_of = next(description for study_id, description in self.series if study_id == shown)
        return "\n".join([*lines, f"The draft is of series {drafted_of}, shown now. {ready}"])

    def _analysed(self, conversation: Conversation, turn: Turn, study_id: str
                  ) -> Generator[Event, None, DetectAnomaliesOutput | None]:
        """``analysis_steps`` on the current series as recorded tool calls; its search's output
        (a vision model's look at the strongest slice kept in ``slice_checks``), or None
        (``error`` set) when the search failed."""
        steps = analysis_steps(conversation.ctx)
        request = next(steps)
        searches = 0
        while True:
            outcome = yield from self._run(conversation, turn, *request)
            if request[0] == "detect_anomalies":
                if not outcome.ok:
                    self.error = outcome.error or "The search for findings failed."
                    return None
                searches += 1
                if searches > 1:
                    self.slice_checks[study_id] = DetectAnomaliesOutput.model_validate(outcome.output)
            try:
                request = steps.send(outcome.output)
            except StopIteration as finished:
                return finished.value

    def _strongest(self, ctx: ToolContext) -> str:
        """The series whose strongest finding is the strongest; the largest one when none is stronger."""
        def top(study_id: str) -> float:
            return max((f.confidence for f in ctx.study_findings(study_id)), default=0.0)

        largest = self.series[0][0]
        return max((study_id for study_id, _ in self.series), key=lambda s: (top(s), s == largest))

    def _said(self, study_id: str) -> str:
        """What one series' search found, in the tools' own words; and what the vision model
        made of its strongest slice, when it was asked."""
        detected = self.searched[study_id]
        count = len(detected.frames_searched)
        where = f"all {count} slices of the series" if count > 1 else "the image"
        reason = "" if detected.assessment_reason in detected.summary else " " + detected.assessment_reason
        said = f"{where}: {detected.summary}{reason}"
        check = self.slice_checks.get(study_id)
        if check is not None:
            said += f" Slice {check.frames_searched[0] + 1} looked at again with the vision model: {check.summary}"
        return said


def job_key_for(connection: PacsConnection, study_uid: str) -> JobKey:
    """The ledger key of the study as the PACS has it now: its image instances counted over its
    image series (Loupe's own SR and Encapsulated PDF series, like any SR / DOC series, are not
    image series, so a result stored back into the study never makes a new job)."""
    check_uid(study_uid)
    listed = series_of(connection, study_uid)
    if not listed:
        study(connection, study_uid)  # "the PACS has no study ..." when it has none
    instances = sum(s.instances for s in listed if s.is_image)
    if instances < 1:
        kinds = ", ".join(sorted({s.modality or "?" for s in listed})) or "no series"
        raise PrereadError(f"Study {study_uid} on the PACS holds no images to pre-read (only {kinds}).")
    return JobKey(study_uid, instances)
