"""Worker: raw events in, domain changes out.

Consumes ``ingest:{p}`` (consumer group ``workers``), one partition at a time
per holder of the partition's drain lock, in stream order. For each raw event
it validates, extracts, hashes and compares with the write model (current hash
and version per resource, per scope, in Redis); a batch of raw events becomes ONE
change entry on ``changes:{p}`` (``Change.encode_many``: one change per raw event,
in stream order), written by the batch's drain commit. A large bulk snapshot is
split over several change entries (slices; only the last carries the receipt).
A batch event's items are decided as single events of its scope, in array order,
into one change entry (``services/worker/batch.py``).

Guarantees: the change entries, the write-model updates, and the XACK/XDEL of
the raw events they came from are committed in ONE MULTI/EXEC guarded by
WATCH on the drain lock, so a crash or a lost lock leaves either all of a
batch's effects or none, and unacknowledged events are re-read (PEL +
XAUTOCLAIM) by the next holder. arq schedules and supervises drain jobs; it is
never the record of an event.
"""
