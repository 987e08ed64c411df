"""
The cores: sans-I/O state machines that make every decision.

``scheduler`` owns the task table, the queue, the workers' leases and jobs;
``worker`` runs what one scheduler connection assigns.  Neither does I/O nor
touches the global reactor: time comes in as an ``IReactorTime``.
"""
