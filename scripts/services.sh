#!/usr/bin/env bash
# Start the local services the test suite talks to, if they are not already running.
# Each check is a TCP connect to 127.0.0.1; each start command is the one the machine uses.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local name=$1 port=$2
  for _ in $(seq 1 60); do
    up "$port" && { echo "$name is up on :$port"; return 0; }
    sleep 0.5
  done
  echo "$name did not come up on :$port" >&2
  return 1
}

ensure() {
  local name=$1 port=$2; shift 2
  if up "$port"; then
    echo "$name is up on :$port"
    return 0
  fi
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "$name is not running on :$port and '$1' is not installed" >&2
    return 1
  fi
  echo "starting $name"
  "$@" >/dev/null 2>&1 || true
  wait_for "$name" "$port"
}

# Server packages the messaging and monitoring tests need; InfluxDB 1.x and Prometheus are
# started by their tests on free ports, so they only have to be installed.
missing=()
command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v influxd >/dev/null 2>&1 || missing+=(influxdb)
# The monitoring tests check the alert rules with promtool and run a real Prometheus.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null 2>&1 \
    || echo "could not install ${missing[*]}" >&2
fi

# S3 runs in-process (moto on loopback); Kafka (tansu) is started by its test fixture.
status=0
ensure PostgreSQL 5432 pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql 2>/dev/null)" main start || status=1
ensure MariaDB 3306 start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || status=1
ensure Mosquitto 1883 mosquitto -d -c /etc/mosquitto/mosquitto.conf || status=1
ensure Redis 6379 redis-server --daemonize yes --port 6379 --bind 127.0.0.1 || status=1
ensure RabbitMQ 5672 rabbitmq-server -detached || status=1
exit $status
