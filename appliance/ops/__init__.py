"""Operating the appliance: metrics, the bounded task store, status levels, reports, heartbeats.

Nothing here is on the question path except :meth:`Metrics.observe_answer` and
:meth:`TaskStore.observe_answer`, which cost microseconds (see `bench/bench_metrics.py`).
"""
