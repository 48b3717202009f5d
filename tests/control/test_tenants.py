"""The controller's decisions on named keys (stack.control.tenants), on a clock the test moves."""

from __future__ import annotations

from serving.keys import KeyEntry
from stack.control.tenants import GRACE, Tenants

GOLD = KeyEntry(b"gold-key-0123456789", "gold", "high", rate=2.0, burst=2, concurrency=2, apis=("alpha", "shop"))


def _tenants(now: list[float]) -> Tenants:
    routers = {"p-alpha": ("alpha", ["alpha"]), "p-beta": ("beta", ["beta"]), "p-split-shop": ("shop", ["beta"])}
    return Tenants(lambda: [GOLD, KeyEntry(b"plain-key-0123456789")], routers, clock=lambda: now[0])


def _headers(key: bytes) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.decode()}"}


def test_the_bucket_refills_at_the_rate_and_says_when() -> None:
    now = [0.0]
    tenants = _tenants(now)
    first = [tenants.check("p-alpha", _headers(GOLD.key)) for _ in range(2)]
    assert [status for status, _body, _h in first] == [200, 200]
    for _status, _body, headers in first:
        tenants.release(headers["X-Stack-Lease"])
    status, body, headers = tenants.check("p-alpha", _headers(GOLD.key))
    assert status == 429 and body == {
        "error": "key gold is over its rate (2/s, burst 2)",
        "key": "gold",
        "limit": "rate",
    }
    assert headers["Retry-After"] == "1"
    now[0] += 0.5  # one token back
    assert tenants.check("p-alpha", _headers(GOLD.key))[0] == 200
    # an unnamed key: no limits, no lease; an unknown one: 401
    assert tenants.check("p-beta", _headers(b"plain-key-0123456789")) == (200, None, {"X-Stack-Lease": "-"})
    assert tenants.check("p-alpha", _headers(b"nope"))[0] == 401


def test_apis_and_splitters_a_key_may_call() -> None:
    tenants = _tenants([0.0])
    status, body, _headers_out = tenants.check("p-beta", _headers(GOLD.key))
    assert status == 403 and body is not None and body["key"] == "gold"
    assert tenants.check("p-split-shop", _headers(GOLD.key))[0] == 200  # the splitter itself is allowed


def test_a_lease_no_replica_holds_is_let_go() -> None:
    now = [0.0]
    tenants = _tenants(now)
    leases = [tenants.check("p-alpha", _headers(GOLD.key))[2]["X-Stack-Lease"] for _ in range(2)]
    now[0] += 1.0
    assert tenants.check("p-alpha", _headers(GOLD.key))[1]["limit"] == "concurrency"  # type: ignore[index]
    # one replica holds the first; the second's replica died with it (it never reports again)
    now[0] += GRACE
    tenants.seen("http://r1", [leases[0]])
    assert tenants.in_flight("gold") == 1
    now[0] += 1.0
    tenants.seen("http://r1", [leases[0]])
    assert tenants.in_flight("gold") == 1  # still held where it runs
    tenants.seen("http://r1", [])
    assert tenants.in_flight("gold") == 0
