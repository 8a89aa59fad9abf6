"""The policy language (``../shared/POLICY.md`` §2.1-2.7, §2.12): one pure engine for both ends.

meshctl validates, explains and compiles per host with it; meshd checks a
pushed policy document with the same validator and enforces with the same
evaluator. Nothing here does I/O, reads a clock or draws a random number:
files arrive as text, time as an argument.

- ``model``: the frozen values a checked document becomes (rules, selectors).
- ``lines``: where each key of a TOML text sits (tomllib gives no positions).
- ``validate``: text or data to a ``Document`` and every ``Problem`` (P001-P042, W001-W002);
  ``fields`` and ``patterns`` check single fields, ``problems`` renders what they find.
- ``wire``: the ``/policy`` document meshctl pushes and meshd loads back.
- ``normalize``: a request target to the path policy matches and the app receives (§2.3).
- ``matchers``: selectors compiled into set lookups, port ranges and path shapes.
- ``compiled``: the applied documents merged and indexed by destination service.
- ``evaluate``: a request to a decision (§2.5); ``ratelimit``: token buckets (§2.7).
"""
