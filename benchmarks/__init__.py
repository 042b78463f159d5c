"""The project's speed, measured side by side (docs/performance.md).

``make bench`` and ``make bench-fast``: bench.py is the command (the driver and the report); workers.py holds the
notebook's loop and the floor; bare.py the bare Trainer with the project's module; turns.py the protocol between the
driver and its worker processes; callback.py the project's side of that protocol. ``make frontier``: frontier.py,
with each config's training FLOPs from flops.py (``python -m benchmarks.flops``: what each config computes).
Alone: net_step.py (a network's step with other options), step_costs.py (where a step's time goes),
study_overhead.py and study_workers.py (what a study costs, and its workers' throughput), study_scale.py
(the study driver's own cost per trial at 20 to 2,000 trials, on SQLite, PostgreSQL and Optuna's gRPC proxy).
"""
