"""The classic stream-processor example: double every number.

Written as a PyDataStream user writes it; only the import differs. The broker is the
embedded log, or Kafka when KAFKA_BROKER is set (e.g. KAFKA_BROKER=127.0.0.1:9092).
"""

from tideflow import Stream


def simple_processor(data):
    return data * 2


stream = Stream("MyPipeline")
stream.register_processor(
    "double_numbers", simple_processor, input_topic="input", output_topic="double"
)
stream.stream_data(data=[1, 2, 3], stream_name="input")
stream.start(stop_at_end=True)  # without stop_at_end: runs until Ctrl-C

print("doubled:", stream.read_data("double"))
