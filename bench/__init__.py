"""jobstream's benchmarks, each beside a bare baseline measured in the same
run (issue 4): ``python -m bench`` (or ``make bench``) for the full report,
``python -m bench --smoke`` for one short round that checks correctness.

Modules: harness (settings, load driver, samples), bare_server and
baselines (bare gRPC and raw sqlite3), procs (server subprocesses), seed
(bulk rows for T8/T11), handlers (the Worker's benchmark jobs), env (the
servers and worker of a run), service (T1-T3, T8-T11), streams (T4-T7),
targets (floors and goals), run (rounds) and report (markdown and JSON).
"""
