"""An opt-in Python-heap tracer for section (f): which allocations grow while the fleet stays idle.

`sitecustomize.py` in this folder starts `tracemalloc` in every Python process of a `dagster dev` tree whose
PYTHONPATH starts with this folder and whose environment sets $RELEASE_GRAPH_HEAP_TRACE_DIR; each process dumps
snapshots at the minutes of $RELEASE_GRAPH_HEAP_TRACE_MINUTES. `compare.py` reads them back and reports the
allocations that grew between each process's earliest and latest snapshot:

    python -m benchmarks.run --only f --memory-minutes 15 --heap-trace-dir /tmp/heap --heap-trace-minutes 5,15
    python -m benchmarks.heap_trace.compare /tmp/heap     # the report again, from the snapshots
"""
