"""Publish simulated sensor readings to MQTT, for the iot example.

    python simulator.py --count 2000 --sensors 8

Each sensor sends a JSON reading on ``<prefix>/<sensor_id>/reading`` once per simulated
10 seconds: temperature drifting around a daily cycle, humidity, and the site. About one
reading in 200 is a sensor glitch (an impossible temperature) that the pipeline filters out,
and ``--malformed`` adds messages that are not JSON, which it dead-letters. Readings are
deterministic for a given ``--seed``, so a test can compute what must arrive.

Each reading carries its sensor's sequence number (``seq``, from 0, one per reading) and the
sensor's ``boot`` (a new one per simulator start, as a device counts from 0 again after a
restart), so the pipeline can tell when readings never arrived. ``--first N`` continues a
boot's sequence at reading ``N`` (with ``--boot``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import paho.mqtt.client as mqtt

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def readings(
    count: int, sensors: int, seed: int, first: int = 0, boot: int = 0
) -> list[dict[str, object]]:
    """``count`` readings from reading number ``first`` on, round-robin over the sensors, in
    time order."""
    rng = random.Random(seed + first * 1_000_003)
    out: list[dict[str, object]] = []
    for n in range(first, first + count):
        sensor = n % sensors
        step = n // sensors
        ts = START_MS + step * 10_000
        temperature = 18 + 6 * math.sin(step / 360 * math.pi) + rng.gauss(0, 0.3) + sensor
        if rng.random() < 0.005:
            temperature = 999.0  # a glitch
        out.append(
            {
                "sensor_id": f"s{sensor:02d}",
                "site": "north" if sensor % 2 == 0 else "south",
                "ts": ts,
                "temperature_c": round(temperature, 2),
                "humidity": round(min(100.0, max(0.0, 45 + rng.gauss(0, 5))), 1),
                "seq": step,
                "boot": boot,
            }
        )
    return out


def main() -> None:
    """Publish the readings and wait until the broker has acknowledged every one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--prefix", default="plant", help="topic prefix")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--sensors", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--malformed", type=int, default=1, help="non-JSON messages to add")
    parser.add_argument("--first", type=int, default=0, help="number of the first reading")
    parser.add_argument("--boot", type=int, default=None, help="default: a new one (the time)")
    args = parser.parse_args()
    boot = int(time.time()) if args.boot is None else args.boot

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.connect(args.host, args.port)
    client.loop_start()
    infos = []
    for reading in readings(args.count, args.sensors, args.seed, args.first, boot):
        topic = f"{args.prefix}/{reading['sensor_id']}/reading"
        infos.append(client.publish(topic, json.dumps(reading), qos=1))
    for n in range(args.malformed):
        infos.append(client.publish(f"{args.prefix}/s00/reading", f"garbage {n}", qos=1))
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()
    print(f"published {len(infos)} messages to {args.prefix}/+/reading")


if __name__ == "__main__":
    main()
