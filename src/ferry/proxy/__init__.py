"""The proxy: clients POST messages, it answers 202 once each is stored.

`app` holds the routes and the OpenAPI document, `ingest` the hot path (bare
ASGI), `admin` the dead-letter routes, `auth` the API keys, `errors` the JSON
error answers, `server` the checks before listening and the uvicorn processes
(whose one-write HTTP protocol is in `ferry.adapters.uvicorn`).
"""
