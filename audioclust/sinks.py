"""Where ``ac.Stream`` writes its records: in-process (``List``, ``Callback``) or as the
service does (``Jsonl``, ``Stdout``). Every sink follows :class:`Sink`."""

from __future__ import annotations

from audioclust.stream.sinks import Sink
from audioclust.stream.sinks.jsonl import JsonlSink as Jsonl
from audioclust.stream.sinks.jsonl import StdoutSink as Stdout
from audioclust.stream.sinks.memory import CallbackSink as Callback
from audioclust.stream.sinks.memory import ListSink as List

__all__ = ["Callback", "Jsonl", "List", "Sink", "Stdout"]
