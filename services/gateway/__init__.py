"""Gateway: HTTP in, raw events out.

Consumes: HTTP requests (ingest API with ingest keys; admin and read APIs with
the admin token). Produces: one raw event per accepted request on
``ingest:{p}`` plus a pending receipt marker. Guarantees: a request is answered
``202 {"eventId"}`` only after its event is appended to Redis (group-committed
with concurrent requests); refused requests append nothing.
"""
