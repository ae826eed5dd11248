"""``tideflow topics``: list, create, inspect, tail and produce to topics (the embedded log
or Kafka)."""

from __future__ import annotations

import sys
from functools import wraps
from pathlib import Path
from typing import Any

import click

from tideflow.cli.common import F, handle_errors
from tideflow.secrets import redact


@click.group()
@click.option(
    "--broker",
    default=None,
    metavar="URL",
    help="kafka://host:port for Kafka; default: KAFKA_BROKER, else the embedded log.",
)
@click.option(
    "--state-dir",
    default=".tideflow",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of the embedded log (topics.db), as beside the pipeline files.",
)
@click.pass_context
def topics(ctx: click.Context, broker: str | None, state_dir: str) -> None:
    """List, create, inspect, tail and produce to topics (embedded log or Kafka)."""
    from tideflow.connectors.topic.admin import Admin
    from tideflow.connectors.topic.settings import resolve_broker

    ctx.obj = Admin(resolve_broker(broker), Path(state_dir))


def _topic_options(fn: F) -> F:
    """``--state-dir`` and ``--broker`` after the subcommand too (``tideflow topics describe
    T --state-dir X``), where they override the group's."""

    @wraps(fn)
    def wrapper(
        admin: Any, *args: Any, state_dir: str | None, broker: str | None, **kwargs: Any
    ) -> Any:
        if state_dir is not None or broker is not None:
            from tideflow.connectors.topic.admin import Admin
            from tideflow.connectors.topic.settings import resolve_broker

            admin = Admin(
                resolve_broker(broker) if broker is not None else admin.bootstrap,
                Path(state_dir) if state_dir is not None else admin.state_dir,
            )
        return fn(admin, *args, **kwargs)

    wrapper = click.option(
        "--state-dir",
        default=None,
        type=click.Path(file_okay=False),
        help="Folder of the embedded log, as before the subcommand.",
    )(wrapper)
    wrapper = click.option(
        "--broker", default=None, metavar="URL", help="As before the subcommand."
    )(wrapper)
    return wrapper  # type: ignore[return-value]


@topics.command("list")
@click.pass_obj
@_topic_options
@handle_errors
def topics_list(admin: Any) -> None:
    """Topic names."""
    for name in admin.names():
        click.echo(name)


@topics.command("create")
@click.argument("topic")
@click.option("--partitions", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--retention-ms", type=click.IntRange(min=1), help="Delete messages older than.")
@click.pass_obj
@_topic_options
@handle_errors
def topics_create(admin: Any, topic: str, partitions: int, retention_ms: int | None) -> None:
    """Create a topic."""
    admin.create(topic, partitions, retention_ms)
    click.echo(f"created {topic} with {partitions} partition(s)")


@topics.command("describe")
@click.argument("topic")
@click.pass_obj
@_topic_options
@handle_errors
def topics_describe(admin: Any, topic: str) -> None:
    """Partitions and their end offsets."""
    ends = admin.end_offsets(topic)
    click.echo(f"{topic}: {len(ends)} partition(s), {sum(ends.values())} message(s) written")
    for part, end in sorted(ends.items()):
        click.echo(f"  partition {part}: next offset {end}")


@topics.command("lag")
@click.argument("topic")
@click.argument("group")
@click.pass_obj
@_topic_options
@handle_errors
def topics_lag(admin: Any, topic: str, group: str) -> None:
    """How far GROUP is behind on TOPIC, per partition."""
    total = 0
    for row in admin.lag(topic, group):
        total += row.lag
        committed = "-" if row.committed is None else row.committed
        click.echo(
            f"partition {row.partition}: committed {committed}, end {row.end}, lag {row.lag}"
        )
    click.echo(f"total lag {total}")


@topics.command("produce")
@click.argument("topic")
@click.option("--key", default=None, help="Key of every message.")
@click.option("--value", "values", multiple=True, help="A message; default: one per stdin line.")
@click.pass_obj
@_topic_options
@handle_errors
def topics_produce(admin: Any, topic: str, key: str | None, values: tuple[str, ...]) -> None:
    """Send messages to TOPIC."""
    lines = list(values) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    try:
        sent = admin.produce(topic, [v.encode() for v in lines], key)
    finally:
        admin.close()
    click.echo(f"sent {sent} message(s) to {topic}")


@topics.command("tail")
@click.argument("topic")
@click.option("-n", "count", default=10, show_default=True, help="Messages per partition.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new messages.")
@click.pass_obj
@_topic_options
@handle_errors
def topics_tail(admin: Any, topic: str, count: int, follow: bool) -> None:
    """The last messages of TOPIC (partition, offset, key, value)."""
    for raw in admin.tail(topic, count, follow):
        for part, offset, key, value in zip(
            raw.partitions, raw.offsets, raw.keys, raw.values, strict=True
        ):
            shown_key = "-" if key is None else bytes(key).decode("utf-8", "replace")
            text = "" if value is None else bytes(value).decode("utf-8", "replace")
            click.echo(f"{part}:{offset} {shown_key} {redact(text)}")
