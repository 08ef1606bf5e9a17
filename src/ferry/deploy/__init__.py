"""Ready files for the guide's production layouts, made from the settings model and the
metric names in `ferry.metrics`, so that none can go stale when either changes.

`nginx` (least_conn in front of several proxy instances), `prometheus` (scrape
configuration with worker discovery, alert rules), `grafana` (a dashboard),
`kubernetes` (manifests and a KEDA ScaledObject), `plan` (the guide's Small / Medium /
Large recommendations from a stated load), `examples` (the repository's deploy/ folder).
"""
