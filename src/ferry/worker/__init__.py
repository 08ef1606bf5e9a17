"""The worker: claims messages, delivers them to the main server, settles each attempt.

`worker` holds the loops (fetch, lease, maintenance) and shutdown, `delivery` the
HTTPS client and what an answer means, `retry_policy` when the next attempt is due.
"""
