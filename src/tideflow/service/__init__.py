"""`tideflow serve`: one server that runs pipelines, shows what flows through them and alerts.

One module per job: :mod:`.catalog` (the folder of pipeline files), :mod:`.worker` (a run in
its own process), :mod:`.runs` (starting, stopping and watching runs), :mod:`.scheduler`
(cron and interval starts), :mod:`.grouplag` (consumer group lag of the folder's topics),
:mod:`.security` (token and request limits), :mod:`.app` (the HTTP routes) and ``static/``
(the web UI: plain HTML and JavaScript, and the YAML editor that ``scripts/editor/build.sh``
bundles into ``static/vendor/``). The Prometheus metrics and the alert rules are
:mod:`tideflow.observe.metrics` and :mod:`tideflow.observe.alerts`, shared with ``tideflow
run --metrics-port`` and the Stream API, which do not import this package.

``import tideflow`` never imports this package, so the core stays free of web frameworks.
"""
