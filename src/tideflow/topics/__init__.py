"""Named topics: the embedded durable log (SQLite) and Kafka behind one interface."""
