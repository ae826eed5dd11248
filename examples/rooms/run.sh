#!/usr/bin/env bash
# Publish the counts, then let both consumer groups read them. Embedded log by default;
# export KAFKA_BROKER=kafka://host:port to run on Kafka, DB_URL=postgresql://... for the totals.
set -euo pipefail
cd "$(dirname "$0")"
tideflow run publish.yaml
tideflow run coldstorage.yaml
tideflow run reckoning.yaml
tideflow topics lag rooms-v1 coldstorage
