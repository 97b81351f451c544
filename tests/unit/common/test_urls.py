"""Issue 29, item 12 (common/urls.py): a password holding an unencoded '/', '?', '#' or a space is redacted
whole, in a URL, in a message and in a config written down; the HTTP store refuses such a URL in one line
that does not quote it, instead of a traceback that does."""

from __future__ import annotations

import pytest

from msa_dist.common.errors import MsaDistError
from msa_dist.common.urls import redact_text, redact_url, redact_values
from msa_dist.config.schema import load_config, to_dict
from msa_dist.data.stores import open_store

SECRET_PIECES = ("s3cr", "et9")  # both halves of every password below: neither may survive


@pytest.mark.parametrize(
    "password", ["s3cr/et9", "s3cr et9", "s3cr?et9", "s3cr#et9", "s3cr/et9 x", "s3cr@et9", "s3cr%2Fet9"]
)
def test_a_password_with_unencoded_characters_is_redacted_whole(password):
    url = f"https://reader:{password}@data.example:8443/shards/x?sig=abc"
    redacted = redact_url(url)
    assert redacted.startswith("https://REDACTED@data.example:8443/"), redacted
    for piece in SECRET_PIECES:
        assert piece not in redacted, redacted
        message = redact_text(f"cannot read {url}: HTTP 500")
        assert piece not in message and "HTTP 500" in message, message
        written = to_dict(load_config(overrides=[f"data.shards={url}"]))
        assert piece not in str(written) and piece not in str(redact_values({"cmd": ["--shards", url]}))


def test_query_tokens_without_a_key_and_at_signs_in_a_query_stay_redacted():
    assert redact_url("https://h/x?s3cret9") == "https://h/x?REDACTED"
    assert redact_url("https://h/x?sig=abc&s3cret9") == "https://h/x?sig=REDACTED&REDACTED"
    assert redact_url("https://h/x?mail=a@b.example&sig=k3y") == "https://h/x?mail=REDACTED&sig=REDACTED"
    assert redact_url("https://h/x") == "https://h/x" and redact_text("see /local/x") == "see /local/x"


@pytest.mark.parametrize("password", ["s3cr/et9", "s3cr?et9", "s3cr#et9"])
def test_the_http_store_refuses_such_a_url_in_one_line(password):
    """The old store took 's3cr' for a port (a traceback quoting it) or sent the rest as the path."""
    with pytest.raises(MsaDistError) as raised:
        open_store(f"http://reader:{password}@127.0.0.1:9/shards")
    message = str(raised.value)
    assert "\n" not in message and "percent-encode" in message
    assert all(piece not in message for piece in SECRET_PIECES), message
