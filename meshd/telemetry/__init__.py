"""What meshd tells: events on a bounded bus, Prometheus metrics fed by them, and log lines.

The proxy publishes past-tense facts (``events``) and never calls a consumer
directly; ``metrics`` is one subscriber. ``logs`` escapes and throttles the
lines a peer can cause.
"""
