"""Analysis workers: the full model on a Celery queue, in batches.

A worker machine runs ``farmeye worker``: a small supervisor process
(:mod:`workers.supervisor`) that starts one Celery worker process per GPU (or
as many as asked on a CPU), restarts them when they die and replaces them one
by one on SIGHUP. Each Celery worker process (:mod:`workers.app`) loads the
model once, gathers tasks into batches (:mod:`workers.batching`), runs the
model (:mod:`workers.runner`) with a Grad-CAM heatmap for every photo it does
not call healthy (:mod:`workers.heatmap`), stores the results
(:mod:`workers.store`), announces them (:mod:`workers.announce`) and only then
acknowledges the tasks. ``docs/workers.md`` tells the whole story.
"""
