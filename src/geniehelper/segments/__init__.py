"""Fan segments and fan scores: the rule language of `fan_segments.rules` (`rules`), its compiler to
one parameterised SQL query (`compiler`), membership refreshed by difference and previews
(`evaluation`), and the transparent fan scores (`scoring`). docs/segments.md and docs/scoring.md
describe both.

Imports only the core below it (`geniehelper.domain`, `geniehelper.db` types, settings); never a job,
a scheduler or a worker module.
"""
