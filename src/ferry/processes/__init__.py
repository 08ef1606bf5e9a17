"""Running ferry's processes on a machine.

`supervisor` keeps children alive, `worker_pool` and `autoscaler` size the
workers, `stack` is `ferry up`, `embedded` the bundled Valkey, `redis_url` which
Redis a command talks to, `devcerts` the development CA of `ferry up`.
"""
