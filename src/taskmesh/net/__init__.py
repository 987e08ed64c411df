"""
Connections: framing, the three role protocols (scheduler, worker, client)
and address parsing.  The protocols only move bytes and call the cores.
"""
