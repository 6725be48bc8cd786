"""Record the comm messages widgets would send to a front end, without a kernel or browser."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import comm
from comm.base_comm import BaseComm


@dataclass
class Message:
    comm_id: str
    msg_type: str
    data: dict
    buffers: list
    time: float


@dataclass
class Recorder:
    """Messages of every comm created while recording, in order."""

    messages: list[Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def updates(self, model_id: str | None = None) -> list[Message]:
        """``update`` messages (state changes), optionally of one widget."""
        return [
            m for m in self.messages
            if m.msg_type == "comm_msg" and m.data.get("method") == "update"
            and (model_id is None or m.comm_id == model_id)
        ]

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()


def recording_comm_class(recorder: Recorder) -> type[BaseComm]:
    class RecordingComm(BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            # A real kernel serialises with allow_nan=False; fail the same way here.
            json.dumps(data, allow_nan=False, default=_reject)
            with recorder.lock:
                recorder.messages.append(
                    Message(self.comm_id, msg_type, data or {}, list(buffers or []), time.monotonic())
                )

    return RecordingComm


def _reject(value):
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def browser_update(widget, **state) -> None:
    """Deliver a state update to ``widget`` as the front end sends it (a click, a slider move)."""
    message = {"method": "update", "state": state, "buffer_paths": []}
    widget._handle_msg({"content": {"data": message}, "buffers": []})


def install(monkeypatch) -> Recorder:
    """Make new widgets talk to a recording comm for the rest of the test."""
    recorder = Recorder()
    comm_class = recording_comm_class(recorder)
    monkeypatch.setattr(comm, "create_comm", lambda *args, **kwargs: comm_class(*args, **kwargs))
    return recorder
