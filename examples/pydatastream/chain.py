"""Two Processor subclasses chained by a topic: room_readings -> fahrenheit -> labelled.

The second processor starts reading once the first has finished (a bounded run ends when
each processor has read everything its input held); a reading without `celsius` is
dead-lettered by the first processor with the reason, and the others go on:

    tideflow deadletters list chain-to_fahrenheit
"""

from tideflow import Processor, Stream


class ToFahrenheit(Processor):
    """Adds `fahrenheit` to a reading in Celsius."""

    def process(self, data):
        return {**data, "fahrenheit": round(data["celsius"] * 9 / 5 + 32, 1)}


class Label(Processor):
    """Labels a reading hot or not; drops readings of the `test` room."""

    def process(self, data):
        if data["room"] == "test":
            return None
        return {**data, "hot": data["fahrenheit"] >= 77}


readings = [
    {"room": "kitchen", "celsius": 21.5},
    {"room": "attic", "celsius": 27.0},
    {"room": "test", "celsius": 0.0},
    {"room": "cellar"},  # no temperature: dead-lettered, with the reason
    {"room": "office", "celsius": 25.0},
]

stream = Stream("chain")
stream.register_processor("to_fahrenheit", ToFahrenheit(), "room_readings", "fahrenheit")
stream.register_processor("label", Label(), "fahrenheit", "labelled")
print("published:", stream.stream_data(readings, stream_name="room_readings"))
stream.start(stop_at_end=True)

for record in stream.read_data("labelled"):
    print(record)
for name, result in stream.results.items():
    counts = result.counts[name]
    print(
        f"{name}: {counts['in']} in, {counts['out']} out, {counts['filtered']} dropped, "
        f"{counts['dead_lettered']} dead-lettered"
    )
