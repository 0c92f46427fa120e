"""ingestd stages: gateway, worker, projector, sources — one folder each.

Stages talk only through Redis streams and PostgreSQL.
"""
