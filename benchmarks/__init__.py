"""``make bench`` and ``make bench-fast``: the project's speed against the notebook's loop and the bare floor.

bench.py is the command (the driver and the report); workers.py holds the notebook's loop and the floor; turns.py
the protocol between the driver and its worker processes; callback.py the project's side of that protocol.
"""
