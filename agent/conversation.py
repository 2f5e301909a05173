"""One clinician's conversation about a study: tool context, model history, usage, backends.

``Conversation.ask`` runs one turn on the configured backend and yields its events. The model
history is kept as JSON-able dicts in google-genai's own shape (thought signatures base64), so
it can be stored and restored losslessly without this module importing the SDK. Offline turns
are appended to it as plain text, so a later Gemini turn knows what was said. Every answer a
backend writes is checked for wording that reads as a normal study before it is recorded or
shown (``answer_check``).

With a store, the conversation is a session: every event is written before it is yielded, each
completed step is committed with ``extend_history``, and ``Conversation.resume`` brings it back
after a reload, a restart or a crash.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.answer_check import checked, note_for_model
from agent.events import AssistantText, Event, TurnError, TurnFinished, TurnStarted, Usage
from agent.privacy.boundary import PrivacyBoundary
from agent.settings import LoupeSettings
from agent.store.database import BUSY_MESSAGE, SessionBusyError, SessionConflictError, Store
from agent.store.sessions import SessionRecorder, repaired_history, restore_tool_state, tool_state
from agent.tool_calls import ToolOutcome, execute
from agent.toolbox import detector_for, performance_for
from tools.context import ToolContext
from tools.errors import LoupeError
from tools.study import Study

#: The prior a model (or the offline planner) names without knowing its UID: the newest earlier
#: study of the patient on the PACS, the same modality and body part first.
LATEST_PRIOR = "pacs:latest"

log = logging.getLogger(__name__)


def model_unavailable(error: Exception) -> TurnError:
    """A model backend could not answer: say why, and that the offline planner can."""
    return TurnError(message=f"{error} The offline planner can answer this turn instead.", reason="model_unavailable",
                     offline_available=True)


def truncated() -> TurnError:
    return TurnError(message="The answer was cut short by the length limit; ask for the rest or a shorter answer.",
                     reason="truncated")


def step_limit(max_steps: int) -> TurnError:
    return TurnError(message=f"Stopped after {max_steps} model steps without a final answer; the tool results so "
                             "far are kept — ask again or narrow the question.", reason="step_limit")


@dataclass
class Turn:
    """One turn in flight: its number, the clinician's message and the usage it accrues."""

    id: int
    message: str
    usage: Usage = field(default_factory=Usage)


class Backend(Protocol):
    """A conversation engine: Gemini, or the offline planner."""

    name: str

    def run_turn(self, conversation: Conversation, turn: Turn) -> Iterator[Event]:
        """Yield the turn's events between ``TurnStarted`` and ``TurnFinished`` (which the
        conversation emits), adding model usage to ``turn.usage``."""
        ...


@dataclass
class Conversation:
    settings: LoupeSettings
    ctx: ToolContext
    boundary: PrivacyBoundary = field(default_factory=PrivacyBoundary)
    history: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    turns: int = 0
    #: ``current_view_key()`` of the display image the model last saw, if any.
    sent_view: tuple | None = None
    recorder: SessionRecorder | None = None
    #: Phrases removed from the model's answers (``answer_check``) that it has not been told of.
    untold_corrections: list[str] = field(default_factory=list)
    #: Studies a tool opened (a prior to compare with, a file the model opened) whose copy is
    #: kept with the session at the next commit: by study id, the study and where it came from.
    unsaved_studies: dict[str, tuple[Study, Path]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.ctx.on_study_added = self._study_added
        if self.ctx.resolve_reference is None and self.settings.pacs_configured:
            self.ctx.resolve_reference = self._retrieved

    def _study_added(self, study: Study, source: Path | None) -> None:
        """Every study opened, however: its identifying values redacted from what reaches a
        model, its copy kept with the session."""
        self.boundary.watch(study)
        if source is not None:
            self.unsaved_studies[study.id] = (study, source)

    def _retrieved(self, reference: str) -> Path:
        """A ``pacs:`` reference retrieved (or its stored copy found): the local folder.
        ``pacs:latest`` is the current study's newest prior (``agent.pacs.priors``): a model
        never sees a UID, so it names the prior this way."""
        from agent.pacs.client import PacsConnection, PacsError  # only when asked: the PACS client is not light
        from agent.pacs.priors import priors_of
        from agent.pacs.reference import PacsReference

        if reference.strip().lower() == LATEST_PRIOR:
            study_uid = self.ctx.view().study.identifying.study_instance_uid
            if not study_uid:
                raise PacsError("The current study has no Study Instance UID, so its priors cannot be looked up.")
            priors = priors_of(PacsConnection(self.settings), study_uid)
            if not priors:
                raise PacsError("The PACS holds no earlier study of this patient to compare with.")
            reference = f"pacs:{priors[0].match.study_uid}"
        parsed = PacsReference.parse(reference)
        if parsed is None:
            raise LoupeError(f"'{reference}' is not a pacs: reference.")
        return parsed.retrieve(self.settings).folder

    @property
    def session_id(self) -> str | None:
        return None if self.recorder is None else self.recorder.session_id

    @classmethod
    def _blank(cls, settings: LoupeSettings, vision=None) -> Conversation:
        # Until a backend attaches (each sets it for its own requests), the configured one decides.
        boundary = PrivacyBoundary(share_age_sex=settings.share_age_sex, on_premises=settings.on_premises_model)
        ctx = ToolContext(limits=settings.study_limits(), vision=vision, image_policy=boundary,
                          model_image_max_side=settings.model_image_max_side, detector=detector_for(settings),
                          performance=performance_for(settings))
        return cls(settings=settings, ctx=ctx, boundary=boundary)

    @classmethod
    def start(cls, settings: LoupeSettings, study_path: Path | None = None, *, modality: str | None = None,
              vision=None, store: Store | None = None, owner: str = "local", session_id: str | None = None,
              title: str = "") -> Conversation:
        """A new conversation (a stored session when ``store`` is given), with ``study_path``
        open when given; a LoupeError if it cannot be opened."""
        conversation = cls._blank(settings, vision)
        if store is not None:
            new_id = store.create_session(owner, title, session_id)
            conversation._attach(SessionRecorder(store, new_id, owner))
            conversation.recorder.audit("session_created", {})
        if study_path is not None:
            conversation.open_study(study_path, modality=modality)
        return conversation

    @classmethod
    def resume(cls, settings: LoupeSettings, store: Store, session_id: str, owner: str, *,
               vision=None) -> Conversation:
        """A stored session as it was after its last completed step."""
        row = store.session_row(session_id, owner)
        conversation = cls._blank(settings, vision)
        conversation._restore(store, session_id, row.state)
        conversation._attach(SessionRecorder(store, session_id, owner, version=row.version))
        history = store.history(session_id)
        # A history ending with the clinician's message was cut by a crash — unless a turn is
        # running right now in another tab or server; then it is simply not finished yet.
        conversation.history, added = (history, []) if store.turn_running(session_id) else repaired_history(history)
        conversation.boundary.approve_sent(conversation.history)
        if added:
            conversation._commit(added)
        return conversation

    def _restore(self, store: Store, session_id: str, state: dict[str, Any]) -> None:
        """Reopen the stored studies, then put the tools' state and the conversation's back."""
        for row in store.studies(session_id):
            self.reopen_study(store.data_dir / row.storage, row.study_id, row.modality)
        restore_tool_state(self.ctx, store, session_id, state)
        self.boundary.confirmed.update(state.get("confirmed", []))
        self.boundary.onsite_images.update(state.get("onsite_images", []))
        sent = state.get("sent_view")
        self.sent_view = None if sent is None else tuple(sent)
        self.usage = Usage.model_validate(state.get("usage", {}))
        self.turns = int(state.get("turns", 0))
        self.untold_corrections = list(state.get("untold_corrections", []))

    def state(self) -> dict[str, Any]:
        """What the store keeps of this conversation besides history, findings and reports."""
        return {
            "turns": self.turns,
            **tool_state(self.ctx),
            "confirmed": sorted(self.boundary.confirmed),
            "onsite_images": sorted(self.boundary.onsite_images),
            "sent_view": None if self.sent_view is None else list(self.sent_view),
            "usage": self.usage.model_dump(),
            "untold_corrections": self.untold_corrections,
        }

    def _attach(self, recorder: SessionRecorder) -> None:
        self.recorder = recorder
        self.boundary.on_request = lambda detail: recorder.audit("model_request", detail)

    def open_study(self, path: Path, *, modality: str | None = None) -> ToolOutcome:
        """Open a study on the clinician's behalf; the model may then open files beside it only."""
        self.allow_beside(path)  # the clinician may open anything; the model only near it
        outcome = execute(self.ctx, "load_study", {"path": str(path), "modality": modality})
        if not outcome.ok:
            raise LoupeError(outcome.error or "The study could not be opened.")
        study = self.ctx.view().study
        self.boundary.watch(study)
        self.ctx.allowed_roots = self.ctx.allowed_roots or ()  # from now on the model is confined
        self.allow_beside(path)
        if self.recorder is not None:
            self._wait_for_no_turn()
            self.recorder.save_study(study, path, modality)
            self.unsaved_studies.pop(study.id, None)
            self._commit()
        return outcome

    def reopen_study(self, stored: Path, study_id: str, modality: str | None = None) -> None:
        """Open a study from its stored copy, keeping the id it had (findings refer to it)."""
        files = sorted(p for p in stored.iterdir() if p.is_file())
        # Several files: the folder, read as the original one was (files that are no image,
        # such as a series' XML annotations, are passed over there, not refused).
        source = str(files[0]) if len(files) == 1 else str(stored)
        self.ctx.allowed_roots = (*(self.ctx.allowed_roots or ()), stored.resolve())
        outcome = execute(self.ctx, "load_study", {"path": source, "modality": modality})
        if not outcome.ok:
            raise LoupeError(f"A study of this session can no longer be opened: {outcome.error}")
        view = self.ctx.view()
        if view.study.id != study_id:
            log.warning("stored study %s reopened as %s; keeping the stored id", study_id, view.study.id)
            self.ctx.views[study_id] = self.ctx.views.pop(view.study.id)
            view.study.id = study_id
            self.ctx.current_study_id = study_id
        self.boundary.watch(view.study)

    def name_modality(self, modality: str | None, study_id: str | None = None) -> None:
        """The clinician says what a PNG/JPEG shows: the tools use it from now on, the session
        remembers it, and the audit trail records it."""
        study = self.ctx.view(study_id).study
        study.name_modality(modality)
        self.ctx.forget_derived(study.id)
        if self.recorder is not None:
            self._wait_for_no_turn()
            self.recorder.store.set_study_modality(self.recorder.session_id, study.id, study.modality)
            self.recorder.audit("modality_named", {"study_id": study.id, "modality": study.modality})
            self._commit()

    def current_view_key(self) -> tuple | None:
        """What the model would see now: study, frame, window and whether pixels may be sent."""
        if self.ctx.current_study_id is None:
            return None
        view = self.ctx.view()
        window = None if view.window is None else (view.window.center, view.window.width)
        return (view.study.id, view.frame, window, self.boundary.release(view.study).status)

    def confirm_no_burned_in_text(self, study_id: str | None = None) -> None:
        """The clinician confirms the (current) study's images show no identifying text."""
        study = self.ctx.view(study_id).study
        self.boundary.confirm(study.id)
        if self.recorder is not None:
            self.recorder.audit("image_release_confirmed", {"study_id": study.id})
            self._commit()

    def _wait_for_no_turn(self) -> None:
        """Before a write outside the versioned commit (a study's stored copy, its modality):
        refuse it while another copy's turn holds the session, dropping this copy's change."""
        recorder = self.recorder
        if recorder.store.held_by_other(recorder.session_id, recorder.holder):
            self._reload()
            raise SessionBusyError(BUSY_MESSAGE)

    def refresh_if_stale(self) -> bool:
        """Reload the session from the store when another tab or server changed it since this
        copy read it (the next turn must build on the whole history); True when it did."""
        if self.recorder is None or not self.recorder.stale():
            return False
        self._reload()
        return True

    def _reload(self) -> None:
        """This copy replaced by the stored session (its own unsaved changes dropped)."""
        recorder = self.recorder
        fresh = Conversation.resume(self.settings, recorder.store, recorder.session_id, recorder.owner,
                                    vision=self.ctx.vision)
        self.ctx.close()
        self.ctx, self.boundary, self.history = fresh.ctx, fresh.boundary, fresh.history
        self.ctx.on_study_added = self._study_added
        self.usage, self.turns, self.sent_view = fresh.usage, fresh.turns, fresh.sent_view
        self.untold_corrections = fresh.untold_corrections
        recorder.version = fresh.recorder.version
        self._attach(recorder)  # this copy keeps its own lock token

    def ask(self, message: str, backend: Backend) -> Iterator[Event]:
        """Run one turn; always ends with ``TurnFinished``, whatever happens inside. With a
        store, the turn holds the session (``SessionBusyError`` before anything is recorded
        when another tab or server's turn holds it) and starts from the stored session."""
        if self.recorder is None:
            yield from self._turn(message, backend)
            return
        self.recorder.acquire()
        try:
            self.refresh_if_stale()
            yield from self._turn(message, backend)
        finally:
            self.recorder.release()

    def _turn(self, message: str, backend: Backend) -> Iterator[Event]:
        self.turns += 1
        turn = Turn(id=self.turns, message=message)
        started = time.perf_counter()
        ok = True
        self._allow_named_paths(message)
        yield self._recorded(TurnStarted(turn_id=turn.id, backend=backend.name, message=message), turn)
        try:
            for event in backend.run_turn(self, turn):
                ok = ok and not isinstance(event, TurnError)
                if isinstance(event, AssistantText):
                    event = self._checked(event, backend)
                yield self._recorded(event, turn)
        except (SessionBusyError, SessionConflictError):
            raise  # this copy was reloaded; the caller says why, in the store's own sentence
        except Exception:  # a bug must not take the conversation down; it is logged in full
            log.exception("turn %s failed unexpectedly", turn.id)
            ok = False
            error = TurnError(message="Loupe hit an internal error in this turn; what was done before it is kept.",
                              reason="other")
            self.close_unanswered(f"(No answer: {error.message})")
            yield self._recorded(error, turn)
        self.usage.add(turn.usage)
        finished = TurnFinished(turn_id=turn.id, usage=turn.usage, ok=ok,
                                wall_ms=round((time.perf_counter() - started) * 1000, 1))
        self._commit()  # usage and turn count
        yield self._recorded(finished, turn)

    def _allow_named_paths(self, message: str) -> None:
        """A study the clinician names by its path in a message ("compare with /data/prior") may be
        opened by the tools in this turn, as one the clinician opened: the confinement keeps a
        model from reaching files nobody named, not from the clinician's own."""
        if self.ctx.allowed_roots is None:
            return
        for token in re.findall(r"(?<!\S)/\S+", message):
            path = Path(token.rstrip(".,;:!?)\"'"))
            if path.exists():
                self.allow_beside(path)

    def allow_beside(self, path: Path) -> None:
        """The model may open files beside ``path`` (a file's folder, or the folder itself), which
        the clinician chose; nothing while the model is not confined at all."""
        if self.ctx.allowed_roots is None:
            return
        folder = path.resolve() if path.is_dir() else path.resolve().parent
        if folder not in self.ctx.allowed_roots:
            self.ctx.allowed_roots = (*self.ctx.allowed_roots, folder)

    def _checked(self, event: AssistantText, backend: Backend) -> AssistantText:
        """An answer as it may be shown, whichever backend wrote it: wording that reads as a
        normal study replaced by what the search is worth (``answer_check``), and audited."""
        event = checked(event, self.ctx)
        if event.corrected:
            self.untold_corrections += event.corrected
            if self.recorder is not None:  # the phrases come from a fixed list: no patient data
                self.recorder.audit("answer_corrected", {"backend": backend.name, "phrases": event.corrected})
        return event

    def _recorded(self, event: Event, turn: Turn) -> Event:
        """Write the event before anyone sees it (streamed pieces are previews: the whole text
        follows as one event, and that is what is stored)."""
        if self.recorder is not None and event.kind != "assistant_delta":
            self.recorder.event(event, turn.id)
        return event

    def extend_history(self, contents: list[dict[str, Any]]) -> None:
        """Append a completed step's contents (and commit them, findings and state together)."""
        contents = self._told(contents)
        self.history.extend(contents)
        self._commit(contents)

    def _told(self, contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``contents`` with a note of the untold corrections added to their first user content.

        The model's own contents stay verbatim (thought signatures must survive), so a claim Loupe
        removed from its answer is still in its history as if the physician had read it; without
        the note, the model would build on it in its next step or turn."""
        first_user = next((i for i, c in enumerate(contents) if c.get("role") == "user"), None)
        if not self.untold_corrections or first_user is None:
            return contents
        note = {"text": note_for_model(self.untold_corrections)}
        self.untold_corrections = []
        told = {**contents[first_user], "parts": [*contents[first_user].get("parts", []), note]}
        return [*contents[:first_user], told, *contents[first_user + 1:]]

    def save(self) -> None:
        """Commit the session's state now (after an action outside a turn, e.g. a sign-off)."""
        self._commit()

    def _commit(self, contents: list[dict[str, Any]] | None = None) -> None:
        """One transaction: ``contents`` added to the history, and findings, reports and state.
        Refused while another copy's turn holds the session or after another copy changed it:
        this copy then reloads what is stored (its refused change is not kept) and says why."""
        if self.recorder is None:
            return
        for study_id, (study, source) in list(self.unsaved_studies.items()):
            if study_id in self.ctx.views:
                self.recorder.save_study(study, source, study.safe.modality if study.safe.modality_source == "user" else None)
            del self.unsaved_studies[study_id]
        try:
            self.recorder.commit(contents or [], self.ctx, self.state())
        except (SessionBusyError, SessionConflictError):
            self._reload()
            raise

    def attach_model(self, proposer, writer, usage: Usage, *, on_premises: bool) -> None:
        """Let the tools use a model backend's vision proposer and report writer, behind this
        conversation's privacy boundary, counting their calls in ``usage``; ``on_premises``: the
        model runs on the site's own servers (the hold for burned-in text does not apply)."""
        self.boundary.on_premises = on_premises
        for helper in (proposer, writer):
            helper.usage, helper.boundary = usage, self.boundary
        self.ctx.vision, self.ctx.report_writer = proposer, writer

    def end_turn(self, error: TurnError) -> TurnError:
        """Close a turn that failed so the history still alternates user/model; the error to yield."""
        self.close_unanswered(f"(No answer: {error.message})")
        return error

    def close_unanswered(self, note: str) -> None:
        """If the history ends with a user turn, add the model's ``note`` so turns alternate."""
        if self.history and self.history[-1].get("role") == "user":
            self.extend_history([{"role": "model", "parts": [{"text": note}]}])

    def note_exchange(self, message: str, answer: str) -> None:
        """Record a turn answered without the model (offline), as plain text history."""
        self.extend_history([{"role": "user", "parts": [{"text": message}]},
                             {"role": "model", "parts": [{"text": answer}]}])
