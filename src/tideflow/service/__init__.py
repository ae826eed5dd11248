"""`tideflow serve`: one server that runs pipelines, shows what flows through them and alerts.

One module per job: :mod:`.catalog` (the folder of pipeline files), :mod:`.worker` (a run in
its own process), :mod:`.runs` (starting, stopping and watching runs), :mod:`.scheduler`
(cron and interval starts), :mod:`.metrics` (Prometheus), :mod:`.alerts` (rules and
notifications), :mod:`.security` (token and request limits), :mod:`.app` (the HTTP routes)
and ``static/`` (the web UI: plain HTML and JavaScript, and the YAML editor that
``scripts/editor/build.sh`` bundles into ``static/vendor/``).

``import tideflow`` never imports this package, so the core stays free of web frameworks.
"""
