"""Notifier: delivers the change feed to webhook endpoints, signed (Standard Webhooks).

Consumes: the change feed (:class:`shared.pg.feed.FeedStore`), woken by the projector's
NOTIFY; the endpoints of ``webhooks``. Produces: one HTTP POST per change per endpoint
whose filters want it (body: the change as the feed API renders it), and a
``webhook_deliveries`` row per change attempted.

Guarantees: at least once: an endpoint's cursor moves in PostgreSQL only after the
endpoint answered 2xx, so a notifier killed at any point resumes at the first change
not acknowledged. Order per endpoint: changes go out in feed order, one at a time; a
failing change blocks only its endpoint (retried with backoff until the retry window
ends, then the endpoint is disabled with the reason). Every endpoint has its own task,
HTTP session and timeouts, so a slow or dead one never delays another. One notifier per
endpoint at a time: a lease row (``lease_owner``/``lease_until``) that every write of the
notifier is conditional on; any number of notifiers may run.
"""
