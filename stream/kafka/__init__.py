"""Kafka: audio in from a consumer group, results out, stream states along with the streams.

Data flows forward through the package:

- :mod:`~audioclust.stream.kafka.config`: the ``[kafka]`` settings that the source, the sink
  and ``audioclust-produce`` share, and the kafka-python passthrough;
- :mod:`~audioclust.stream.kafka.messages`: the audio message format (headers, PCM, WAV/FLAC);
- :mod:`~audioclust.stream.kafka.offsets`: which offsets are done and may be committed;
- :mod:`~audioclust.stream.kafka.dead_letters`: malformed messages to the dead-letter topic;
- :mod:`~audioclust.stream.kafka.changelog`: stream states on a compacted changelog topic;
- :mod:`~audioclust.stream.kafka.registry`: the group's discovered clusters on one topic;
- :mod:`~audioclust.stream.kafka.source`: :class:`KafkaSource`, which uses all of the above;
- :mod:`~audioclust.stream.kafka.sink`: :class:`KafkaSink`, results back to a topic;
- :mod:`~audioclust.stream.kafka.produce`: ``audioclust-produce``, recordings to a topic.

Nothing is imported here, so that ``audioclust-produce --help`` does not load kafka-python.
"""
