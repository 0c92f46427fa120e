"""Benchmarks (``make bench``): each figure measured beside its floor, in the same run.

    make bench                              # full run, about 5 minutes on 2 cores
    make bench BENCH_ARGS="--quick"         # smoke run, about 1 minute
    make bench BENCH_ARGS="--only 1,3"      # some figures
    make bench BENCH_ARGS="--profile DIR"   # + py-spy hotspots of worker and projector
                                            #   (and of the sources stage with figure 8)

Servers: ``DATABASE_URL`` when set (database ``ingestd_bench``), else an embedded
PostgreSQL; Redis as deployed: a private ``redis-server`` (``deploy/redis.conf``:
``appendonly yes``, ``appendfsync everysec``) on a free loopback port when it is on PATH,
``--redis-url URL`` for an external one (its db 14), else ``REDIS_URL``'s db 14 or an
embedded one. The run's header says which. Every process under test is started as a
user starts it (``ingestd gateway|worker|projector|sources``, the demo API as
``python -m tests.demo_api``); load comes from a
separate process: ``wrk`` when installed, else ``python -m tests.bench.load``.
The table goes to stdout, every number (runs, CPU shares, floors) to
``bench-results.json``.

Modules: ``__main__`` (CLI, table), ``env`` (servers, state, processes, CPU
meters), ``load`` / ``loadgen`` (generators), ``bare`` (floor servers),
``fig_gateway`` (1), ``fig_pipeline`` (3, 5, 6), ``fig_bulk`` (2, 4, 7),
``fig_sources`` (8: a full pull-source run), ``fig_shaping`` (9: figure 4's snapshot
through a schema that normalises and fills defaults),
``fig_live`` (15: live applied events/s of ingestd ÷ the direct synchronous peer,
``peer``; 16: live CPU per event at 50 % / 90 % of the maximum vs figure 3's backlog),
``profile`` (py-spy hotspots), ``bulk_diff`` (figure 7's own script).
"""
