"""Client encodings through the proxy: every server encoding works, client-only ones are
refused with the reason, and the guard holds in all of them."""

from __future__ import annotations

import psycopg
import pytest

from tests.proxy_harness import ThreadedProxy
from tests.support import AppDatabase

pytestmark = pytest.mark.usefixtures("clean_items")

SAMPLES = {"LATIN9": "café €uro", "EUC_JP": "日本語のテキスト", "WIN1251": "Привет",
           "LATIN1": "naïve façade"}


@pytest.mark.parametrize("encoding", sorted(SAMPLES))
def test_text_round_trips_in_a_server_encoding(proxy: ThreadedProxy, app_db: AppDatabase,
                                               encoding: str) -> None:
    text = SAMPLES[encoding]
    with psycopg.connect(proxy.dsn("acme", client_encoding=encoding), autocommit=True) as conn:
        assert conn.info.parameter_status("client_encoding") == encoding
        conn.execute("INSERT INTO items (name) VALUES (%s)", [text])
        assert conn.execute("SELECT name FROM items WHERE name = %s", [text]).fetchone() == (
            text,)
        # The guard still reads the statements right in this encoding.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT '{text}', set_config('app.current_tenant', 'globex', false)")
        assert conn.execute("SELECT DISTINCT tenant_id FROM items").fetchall() == [("acme",)]
    with psycopg.connect(app_db.superuser_dsn) as conn:  # stored as the characters sent
        assert conn.execute("SELECT tenant_id FROM items WHERE name = %s",
                            [text]).fetchone() == ("acme",)


def test_set_client_encoding_mid_session_and_bound(proxy: ThreadedProxy) -> None:
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        conn.execute("SET client_encoding TO 'LATIN9'")
        assert conn.info.encoding == "iso8859-15"
        assert conn.execute("SELECT %s::text", ["€"]).fetchone() == ("€",)
        conn.execute("SELECT set_config('client_encoding', %s, false)", ["utf8"])
        assert conn.info.encoding == "utf-8"
        assert conn.execute("SELECT %s::text", ["日本"]).fetchone() == ("日本",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not supported"):
            conn.execute("SELECT set_config('client_encoding', %s, false)", ["SJIS"])
        assert conn.info.encoding == "utf-8"


@pytest.mark.parametrize("encoding", ["SJIS", "BIG5", "GBK"])
def test_client_only_encoding_is_refused_at_startup(proxy: ThreadedProxy,
                                                    encoding: str) -> None:
    # libpq drops the SQLSTATE of a startup error; the message is the proxy's.
    with pytest.raises(psycopg.OperationalError, match="not supported through pgtenant"):
        psycopg.connect(proxy.dsn("acme", client_encoding=encoding))


def test_clients_of_different_encodings_share_one_backend(
        start_proxy: object, app_db: AppDatabase) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=1)  # type: ignore[operator]
    with psycopg.connect(proxy.dsn("acme", client_encoding="LATIN9"), autocommit=True) as a, \
            psycopg.connect(proxy.dsn("globex"), autocommit=True) as b:
        for _ in range(5):
            assert a.execute("SELECT %s::text, current_setting('client_encoding')",
                             ["€"]).fetchone() == ("€", "LATIN9")
            assert b.execute("SELECT %s::text, current_setting('client_encoding')",
                             ["日本"]).fetchone() == ("日本", "UTF8")
