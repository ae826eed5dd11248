"""The ``pii`` step: every detector with positive and negative cases, every action."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from tideflow.core.contracts import Context
from tideflow.errors import PipelineError
from tideflow.operators.pii import Pii, PiiConfig, iban_valid, luhn_valid
from tideflow.secrets import redact

pytestmark = pytest.mark.timeout(60)

SALT = "pepper-salt-4242"


def make_step(config: dict[str, Any], tmp: Path | None = None) -> Pii:
    step = Pii(PiiConfig.model_validate(config))
    step.open(
        Context("p", "pii", tmp or Path("."), Path("."), threading.Event()),
        None,
    )
    return step


def run(config: dict[str, Any], frame: pl.DataFrame) -> pl.DataFrame:
    return make_step(config).process(frame).outputs["out"]


# (detector, text with PII, what must disappear, text without PII)
CASES = [
    ("email", "write to ann.lee+x@mail.example.co.uk today", "ann.lee", "ann at example dot com"),
    ("email", "bob@example.org", "bob@", "user@localhost has no domain"),
    ("phone", "call +44 20 7946 0018 now", "7946", "order 12345 shipped"),
    ("phone", "US (555) 123-4567 or 555.123.4567", "123", "on 2024-01-15 at 10:30"),
    ("phone", "office 020 7946 0018", "7946", "version 1.2.3 released"),
    ("credit_card", "card 4111 1111 1111 1111 ok", "4111 1111", "card 4111 1111 1111 1112 bad"),
    ("credit_card", "amex 378282246310005", "3782822", "ref 1234567890123 is no card"),
    ("credit_card", "visa 4012-8888-8888-1881", "8888-8888", "short 4111 1111 111"),
    ("ipv4", "from 192.168.10.200 at", "192.168", "range 999.1.1.1 and 1.2.3"),
    ("ipv4", "host 8.8.8.8", "8.8.8.8", "pi is 3.14159"),
    ("ipv6", "from 2001:db8::ff00:42:8329 at", "2001:db8", "at 12:30:45 sharp"),
    ("ipv6", "fe80:0000:0000:0000:0202:b3ff:fe1e:8329", "fe80", "abc:def is text"),
    ("iban", "pay GB82 WEST 1234 5698 7654 32 now", "WEST 1234", "GB82 WEST 1234 5698 7654 33"),
    ("iban", "DE89370400440532013000", "DE89", "DE00 1234 ABCD is not one"),
    ("person_name", "Yesterday Maria Gonzalez called", "Gonzalez", "Shipped to Virginia Beach"),
    ("person_name", "signed by Mary J. Okafor-Smith", "Okafor", "lives at 12 Warren Lane"),
    ("person_name", "escalated to Dr. Patel today", "Patel", "In New York on Easter Sunday"),
]


@pytest.mark.parametrize(("detector", "positive", "secret", "negative"), CASES)
def test_detector_finds_pii_and_leaves_ordinary_text(
    detector: str, positive: str, secret: str, negative: str
) -> None:
    frame = pl.DataFrame({"text": [positive, negative, None]})
    step = make_step({"detect": [detector], "action": "redact"})
    out = step.process(frame).outputs["out"]["text"].to_list()
    assert secret not in out[0]
    assert f"[{detector.upper()}]" in out[0]
    assert out[1] == negative  # nothing that is not PII is touched
    assert out[2] is None
    assert step.audit == {f"text:{detector}": 1}


def test_every_detector_at_once_with_the_default_settings() -> None:
    assert PiiConfig().detect == "auto"
    text = (
        "ann@example.com, +1 (555) 123-4567, 4111 1111 1111 1111, 10.0.0.1, 2001:db8::1, "
        "GB82 WEST 1234 5698 7654 32"
    )
    out = run({"detect": "auto"}, pl.DataFrame({"t": [text]}))["t"][0]
    assert out == "[EMAIL], [PHONE], [CREDIT_CARD], [IPV4], [IPV6], [IBAN]"


def test_luhn_is_vectorised_and_correct() -> None:
    digits = pl.Series(["4111111111111111", "4111111111111112", "79927398713", "0", "18"])
    assert luhn_valid(digits).to_list() == [True, False, True, True, True]


def test_iban_checksum() -> None:
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("DE89370400440532013001")
    assert not iban_valid("GB82WEST")


def test_mask_keeps_the_last_characters() -> None:
    frame = pl.DataFrame({"t": ["card 4111 1111 1111 1111."], "pin": ["1234"], "c": ["4111"]})
    out = run(
        {"detect": ["credit_card"], "action": "mask", "columns": {"c": "mask", "pin": "mask"}},
        frame,
    )
    assert out["t"][0] == "card ***************1111."
    assert out["pin"][0] == "****"  # as short as `keep_last`: masked entirely
    assert out["c"][0] == "****"


def test_mask_keep_last_zero_masks_everything() -> None:
    out = run(
        {"columns": {"c": "mask"}, "keep_last": 0, "detect": []}, pl.DataFrame({"c": ["abc"]})
    )
    assert out["c"][0] == "***"


def test_hash_is_salted_sha256_equal_in_columns_and_text() -> None:
    frame = pl.DataFrame(
        {
            "email": ["ann@example.com", None, "ann@example.com"],
            "t": ["from ann@example.com", "", "x"],
        }
    )
    out = run(
        {"columns": {"email": "hash"}, "detect": ["email"], "action": "hash", "salt": SALT}, frame
    )
    digest = hashlib.sha256((SALT + "ann@example.com").encode()).hexdigest()
    assert out["email"].to_list() == [digest, None, digest]
    assert out["t"][0] == f"from {digest}"  # joinable with the hashed column
    other = run({"columns": {"email": "hash"}, "detect": [], "salt": "other-salt"}, frame)
    assert other["email"][0] != digest  # the salt matters


def test_hash_without_a_salt_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="needs a salt"):
        PiiConfig.model_validate({"columns": {"email": "hash"}})
    with pytest.raises(ValidationError, match="needs a salt"):
        PiiConfig.model_validate({"action": "hash"})


def test_salt_from_the_environment_is_kept_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TEST_PII_SALT", "env-salt-93812")
    step = make_step({"columns": {"e": "hash"}, "detect": [], "salt_env": "TEST_PII_SALT"})
    out = step.process(pl.DataFrame({"e": ["x"]})).outputs["out"]
    assert out["e"][0] == hashlib.sha256(b"env-salt-93812x").hexdigest()
    assert redact("salt is env-salt-93812") == "salt is ***"
    monkeypatch.delenv("TEST_PII_SALT")
    with pytest.raises(PipelineError, match="TEST_PII_SALT"):
        make_step({"columns": {"e": "hash"}, "detect": [], "salt_env": "TEST_PII_SALT"})


def test_redact_and_drop_of_named_columns() -> None:
    frame = pl.DataFrame(
        {"name": ["Ann", None], "ssn": ["123-45-6789", "987-65-4321"], "n": [1, 2]}
    )
    step = make_step({"columns": {"name": "redact", "ssn": "drop"}, "detect": []})
    out = step.process(frame).outputs["out"]
    assert out.columns == ["name", "n"]
    assert out["name"].to_list() == ["[NAME]", None]
    assert step.audit == {"name:redact": 1, "ssn:drop": 2}


def test_drop_cuts_detected_spans_out_of_text() -> None:
    out = run({"detect": ["email"], "action": "drop"}, pl.DataFrame({"t": ["a ann@x.io b"]}))
    assert out["t"][0] == "a  b"


def test_per_detector_actions_and_user_patterns() -> None:
    frame = pl.DataFrame({"t": ["EMP-123456 wrote from ann@example.com via 10.1.2.3"]})
    out = run(
        {
            "detect": ["email", "ip", "employee"],
            "patterns": {"employee": r"EMP-\d{6}"},
            "actions": {"email": "mask", "employee": "redact"},
            "action": "drop",
        },
        frame,
    )
    assert out["t"][0] == "[EMPLOYEE] wrote from ***********.com via "


def test_auto_scans_every_text_column_but_leaves_other_types() -> None:
    frame = pl.DataFrame({"a": ["x@y.io"], "b": ["call 555-123-4567"], "n": [5551234567]})
    out = run({}, frame)
    assert out.row(0) == ("[EMAIL]", "call [PHONE]", 5551234567)


def test_explicit_scan_only_touches_the_listed_columns() -> None:
    frame = pl.DataFrame({"a": ["x@y.io"], "b": ["x@y.io"]})
    out = run({"scan": ["a"]}, frame)
    assert out.row(0) == ("[EMAIL]", "x@y.io")


def test_clear_errors() -> None:
    with pytest.raises(ValidationError, match=r"unknown detector 'emial'.*email"):
        PiiConfig.model_validate({"detect": ["emial"]})
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        PiiConfig.model_validate({"patterns": {"x": "(unclosed"}})
    with pytest.raises(PipelineError, match="not in the batch"):
        run({"columns": {"missing": "redact"}}, pl.DataFrame({"a": ["x"]}))
    with pytest.raises(PipelineError, match="needs text columns"):
        run({"scan": ["n"]}, pl.DataFrame({"n": [1]}))


def test_audit_trail_is_logged_on_close(caplog: pytest.LogCaptureFixture) -> None:
    step = make_step({"detect": ["email"]})
    step.process(pl.DataFrame({"t": ["a@b.io", "none", "c@d.io e@f.io"]}))
    with caplog.at_level(logging.INFO, logger="tideflow.p.pii"):
        step.close()
    assert step.audit == {"t:email": 2}
    assert "pii rules fired: t:email=2" in caplog.text


def test_a_large_batch_is_processed_with_expressions() -> None:
    n = 20_000
    frame = pl.DataFrame(
        {"t": [f"user{i}@example.com paid with 4111 1111 1111 1111" for i in range(n)]}
    )
    step = make_step({"detect": ["email", "credit_card"], "action": "mask"})
    out = step.process(frame).outputs["out"]
    assert out["t"].str.contains("@example").sum() == 0
    assert out["t"].str.contains("4111 1111").sum() == 0
    assert step.audit == {"t:email": n, "t:credit_card": n}


# -- tideflow pii scan ---------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from tideflow.cli.main import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_scan_frame_counts_values_per_column_and_detector_with_masked_examples() -> None:
    from tideflow.operators.pii import scan_frame

    frame = pl.DataFrame(
        {
            "note": ["card 4111 1111 1111 1111", "mail ann@example.com", None, "plain"],
            "n": [1, 2, 3, 4],
        }
    )
    found = scan_frame(frame)
    assert found.select("column", "detector", "values", "of").rows() == [
        ("note", "credit_card", 1, 3),
        ("note", "email", 1, 3),
    ]  # the card is not counted again as a phone number
    examples = found["example"].to_list()
    assert examples == ["***************1111", "***********.com"]
    assert scan_frame(pl.DataFrame({"t": ["nothing here"]})).height == 0


def test_pii_scan_command_on_a_data_file(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text("id,email,note\n1,ann@example.com,call 555-123-4567\n2,bob@example.org,hi\n")
    code, output = invoke("pii", "scan", str(path))
    assert code == 0, output
    assert "2 record(s) scanned" in output
    assert "email: email in 2 of 2 value(s)" in output
    assert "note: phone in 1 of 2 value(s), e.g. ********4567" in output
    assert "ann@example.com" not in output  # examples are masked
    code, output = invoke("pii", "scan", str(tmp_path / "people.txt"))
    assert code == 2 and "cannot scan .txt" in output


def test_pii_scan_command_reads_a_pipelines_source_without_running_it(tmp_path: Path) -> None:
    from tideflow.testing.fake_api import FakeApi

    with FakeApi(records=250) as api:
        pipeline = tmp_path / "p.yaml"
        pipeline.write_text(
            f"""
name: scan-me
source:
  type: http
  url: {api.url("/offset")}
  records_path: items
  pagination: {{style: offset, page_size: 100}}
sink: {{type: file, path: out, format: parquet}}
"""
        )
        code, output = invoke("pii", "scan", str(pipeline), "--rows", "150")
        assert code == 0, output
        assert api.stats.paths["/offset"] == 2  # stopped once 150 records were read
    assert "scan-me (source http): 150 record(s) scanned" in output
    assert "email: email in 150 of 150" in output
    assert "note: phone in 150 of 150" in output
    assert not (tmp_path / "out").exists()  # nothing written
    assert not (tmp_path / ".tideflow").exists()  # no state kept


def test_redact_with_template() -> None:
    out = run(
        {"detect": ["email"], "redact_with": "<{name} removed>"}, pl.DataFrame({"t": ["a@b.io"]})
    )
    assert out["t"][0] == "<EMAIL removed>"
    with pytest.raises(ValidationError, match="redact_with"):
        PiiConfig.model_validate({"redact_with": "[{kind}]"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Meeting: Rachel Hill and John Paul Jones agreed.", "Meeting: [N] and [N] agreed."),
        ("Maria Gonzalez's order, per Mrs Nguyen.", "[N]'s order, per [N]."),
        ("Thanks Kelsey Hall, we have updated it.", "Thanks [N], we have updated it."),
        ("Pickup at Grant Park Airport after Christmas Eve.", None),
        ("Customer lives at 93913 Warren Lane, apartment 9.", None),
        ("Transferred to Morgan Stanley Customer Service.", None),
        ("In Many Long Years the Grand Canyon.", None),
        ("maria gonzalez wrote in lower case.", None),
    ],
)
def test_person_names_in_free_text(text: str, expected: str | None) -> None:
    step = make_step({"detect": ["person_name"], "redact_with": "[N]"})
    out = step.process(pl.DataFrame({"note": [text]})).outputs["out"]["note"][0]
    assert out == (text if expected is None else expected)


def test_person_names_can_be_hashed_consistently() -> None:
    frame = pl.DataFrame({"a": ["call Jane Doe now"], "b": ["Jane Doe paid"]})
    out = run({"detect": ["person_name"], "action": "hash", "salt": SALT}, frame)
    digest = hashlib.sha256(SALT.encode() + b"Jane Doe").hexdigest()
    assert out.to_dicts() == [{"a": f"call {digest} now", "b": f"{digest} paid"}]


def test_person_name_precision_and_recall_on_generated_sentences() -> None:
    # The benchmark's generator: Faker names, near misses (places, companies, holidays,
    # addresses) and plain sentences; the detector's lists come from the US Census.
    from benchmarks.pii_names import generate, measure

    figures = measure(generate(1200, seed=11))
    assert figures["names"] > 500
    assert figures["recall"] >= 0.90, figures
    assert figures["precision"] >= 0.95, figures
