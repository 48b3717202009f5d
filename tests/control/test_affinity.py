"""Model affinity's decisions (stack.control.affinity) and the routes they make, without a stack."""

from __future__ import annotations

from collections import Counter

import yaml

from serving.affinity import AffinityTracker
from stack import routes
from stack.control.affinity import COOL_AFTER, ApiAffinity, Spread, assign, rank
from stack.control.autoscale.policy import Bounds, Decision, WorkingSet, hold_models

SERVERS = [f"http://10.0.0.{i}:8888" for i in range(1, 5)]
MODELS = [f"model-{i}" for i in range(200)]


def test_each_value_goes_to_its_first_ranked_replica_and_a_new_replica_takes_only_its_share() -> None:
    before = assign({}, dict.fromkeys(MODELS, 1), SERVERS, spread_at=4)
    assert all(servers == (rank(v, SERVERS)[0],) for v, servers in before.items())
    spread = Counter(servers[0] for servers in before.values())
    assert len(spread) == 4 and min(spread.values()) > 25  # every replica gets a fair share of the values
    fifth = "http://10.0.0.5:8888"
    after = assign({}, dict.fromkeys(MODELS, 1), [*SERVERS, fifth], spread_at=4)
    moved = [v for v in MODELS if after[v] != before[v]]
    assert moved and all(after[v] == (fifth,) for v in moved)  # only to the new one
    assert len(moved) < len(MODELS) * 0.35  # about a fifth
    # one replica leaving: only its values move
    gone = SERVERS[0]
    left = assign({}, dict.fromkeys(MODELS, 1), SERVERS[1:], spread_at=4)
    assert all(left[v] == before[v] for v in MODELS if before[v] != (gone,))


def test_a_hot_value_spreads_over_more_replicas_and_never_piles_up() -> None:
    loads = {"hot": 7.0, "warm": 1.0, "cold": 0.1}
    chosen = assign(loads, {"hot": 4, "warm": 1, "cold": 1}, SERVERS, spread_at=2)
    # onto every replica with room for a quarter of it (1.75 in flight): not the one busy with "warm"
    spare = [s for s in SERVERS if s == chosen["hot"][0] or s != chosen["warm"][0]]
    assert sorted(chosen["hot"]) == sorted(spare) and len(chosen["warm"]) == 1
    # Many busy values ranked onto one replica: the bound sends some elsewhere.
    first = SERVERS[0]
    same = [v for v in MODELS if rank(v, SERVERS)[0] == first][:8]
    loads = dict.fromkeys(same, 2.0)
    placed = assign(loads, dict.fromkeys(same, 1), SERVERS, spread_at=2)
    per_server = Counter(s for servers in placed.values() for s in servers)
    assert per_server[first] * 2.0 <= 1.25 * 16 / 4 + 2  # within the bound
    assert len(per_server) > 1
    # Light traffic is never moved off its first replica.
    light = assign(dict.fromkeys(same, 0.2), dict.fromkeys(same, 1), SERVERS, spread_at=2)
    assert all(servers == (first,) for servers in light.values())


def test_a_value_cools_back_only_after_a_while() -> None:
    spread = Spread()
    assert spread.update(load=5, spread_at=2, replicas=4, now=0) == 3
    assert spread.update(load=9, spread_at=2, replicas=4, now=1) == 4  # capped at the replicas
    assert spread.update(load=1, spread_at=2, replicas=4, now=2) == 4  # cooler: not yet
    assert spread.update(load=1, spread_at=2, replicas=4, now=2 + COOL_AFTER) == 3
    assert spread.update(load=1, spread_at=2, replicas=2, now=3 + COOL_AFTER) == 2  # a replica left


def test_reports_become_loads_and_routes() -> None:
    now = [100.0]
    affinity = ApiAffinity(spread_at=1.0, clock=lambda: now[0])
    assert affinity.observe(SERVERS[0], {"held": ["a"], "busy": {"a": 10.0, "b": 1.0}, "hits": 3, "misses": 1})
    now[0] += 2
    assert not affinity.observe(SERVERS[0], {"held": ["a"], "busy": {"a": 16.0, "b": 1.0}, "hits": 9, "misses": 1})
    table = affinity.routes(SERVERS)
    assert affinity.loads["a"] == 3.0 and affinity.loads["b"] == 0.0
    assert len(table["a"]) == 3 and len(table["b"]) == 1  # 3 in flight, one per replica
    assert affinity.hit_ratio() == 0.9
    # values with characters a rule cannot carry are not routed; a replica gone takes its report along
    affinity.observe(SERVERS[1], {"held": ["we`ird", "c"], "busy": {}, "hits": 0, "misses": 0})
    assert "we`ird" not in affinity.routes(SERVERS) and "c" in affinity.routes(SERVERS)
    affinity.routes(SERVERS[2:])
    assert set(affinity.reports) == set()


def test_routes_give_each_value_a_router_above_the_apis_own() -> None:
    route = routes.Route(
        "p-classify",
        "/classify",
        tuple(SERVERS),
        api="classify",
        affinity=("query", "model"),
        pins=(("iris", (SERVERS[1],)), ("wine", (SERVERS[2], SERVERS[3]))),
        max_body=1000,
    )
    config = routes.dynamic_config([route], errors_url="http://127.0.0.1:9")["http"]
    iris = routes.pin_name("p-classify", "iris")
    assert config["routers"][iris]["rule"].endswith("&& Query(`model`, `iris`)")
    assert config["services"][iris]["loadBalancer"]["servers"] == [{"url": SERVERS[1]}]
    own = len(config["routers"]["p-classify"]["rule"])
    assert own < config["routers"][iris]["priority"] < config["routers"]["p-classify-too-large"]["priority"]
    assert config["routers"][iris]["middlewares"] == config["routers"]["p-classify"]["middlewares"]
    header = routes.Route("p-x", "/x", tuple(SERVERS), affinity=("header", "X-Model"), pins=(("a", (SERVERS[0],)),))
    rendered = yaml.safe_load(routes.render([header]))
    assert "Header(`X-Model`, `a`)" in rendered["http"]["routers"][routes.pin_name("p-x", "a")]["rule"]


class _Request:
    def __init__(self, model: str | None) -> None:
        self.query = {"model": model} if model else {}
        self.query_string = f"model={model}" if model else ""
        self.headers: dict[str, str] = {}


def test_a_replica_reports_what_it_holds_and_its_hits() -> None:
    now = [0.0]
    tracker = AffinityTracker(("query", "model"), clock=lambda: now[0])
    first = tracker.begin(_Request("iris"))
    now[0] += 1.5
    tracker.end(first)
    tracker.end(tracker.begin(_Request("iris")))
    assert tracker.begin(_Request(None)) is None
    running = tracker.begin(_Request("wine"))
    now[0] += 0.5
    report = tracker.report()
    assert report == {
        "held": ["iris", "wine"],
        "cached": False,  # the values it served recently stand for what it holds
        "busy": {"iris": 1.5, "wine": 0.5},
        "hits": 1,
        "misses": 2,
    }
    tracker.end(running)
    models: set[str] = {"cancer"}
    store_backed = AffinityTracker(("query", "model"), loaded=lambda: models)
    store_backed.end(store_backed.begin(_Request("iris")))
    store_backed.end(store_backed.begin(_Request("cancer")))
    assert store_backed.report()["held"] == ["cancer"] and (store_backed.hits, store_backed.misses) == (1, 1)
    assert store_backed.report()["cached"] is True


def test_models_in_use_beyond_what_the_replicas_hold_ask_for_one_more() -> None:
    bounds = Bounds(min_replicas=1, max_replicas=4, target=4.0)
    quiet = Decision(2, "in-flight 1.0 of target 4", rule="target")
    more = hold_models(quiet, current=2, bounds=bounds, models=WorkingSet(in_use=7, per_replica=2))
    assert more.desired == 3 and more.rule == "models"
    assert "models in use (7) exceed what 2 replica(s) hold (cache_size 2 each)" in more.reason
    # never past max_replicas, and never fewer than they need (no scale-down below it)
    assert hold_models(Decision(4, "x"), 4, bounds, WorkingSet(20, 2)).desired == 4
    down = hold_models(Decision(1, "in-flight 0"), 3, bounds, WorkingSet(5, 2))
    assert down.desired == 3 and down.rule == "models"
    assert hold_models(quiet, 2, bounds, WorkingSet(4, 2)) is quiet  # they fit: the policy decides


def test_what_one_replica_holds_is_observed_from_its_evictions() -> None:
    """No cache_size in the spec: a replica whose held values are a real cache shows its size by evicting."""
    now = [0.0]
    affinity = ApiAffinity(spread_at=1.0, clock=lambda: now[0])

    def report(server: str, held: list[str], misses: int, cached: bool = True) -> None:
        affinity.observe(server, {"held": held, "cached": cached, "busy": {}, "hits": 0, "misses": misses})

    report(SERVERS[0], ["a"], 1)
    report(SERVERS[0], ["a", "b"], 2)  # filling up: nothing evicted yet
    assert affinity.capacity is None
    report(SERVERS[0], ["b", "c"], 3)  # a left while two stay: full at two
    assert (affinity.observed_capacity, affinity.capacity) == (2, 2)
    report(SERVERS[1], ["x", "y", "z"], 0)
    report(SERVERS[1], ["z"], 0)  # unloaded for another reason (fewer stay): says nothing of the size
    report(SERVERS[2], ["p", "q", "r"], 0, cached=False)
    report(SERVERS[2], ["q", "r", "s"], 0, cached=False)  # recent values, not a cache: no eviction
    assert affinity.capacity == 2
    assert affinity.loads_per_minute() == 2.0  # the misses since each replica's first report
    report(SERVERS[0], ["c", "d"], 1)  # a restarted replica counts afresh: no negative loads
    now[0] = 61.0
    assert affinity.loads_per_minute() == 0.0  # only the last minute's
    affinity.per_server = 4  # the spec's cache_size wins over what was observed
    assert affinity.capacity == 4


def test_models_beyond_an_observed_capacity_ask_for_one_more_saying_what_it_costs() -> None:
    bounds = Bounds(min_replicas=1, max_replicas=4, target=4.0)
    more = hold_models(
        Decision(1, "in-flight 0.5"), 1, bounds, WorkingSet(in_use=5, per_replica=2, loads_per_minute=48)
    )
    assert more.desired == 2 and more.rule == "models"
    assert "exceed what 1 replica(s) hold (2 each, as their evictions showed; 48 loads/min)" in more.reason


def test_the_working_set_counts_models_served_within_the_window() -> None:
    now = [0.0]
    affinity = ApiAffinity(spread_at=1.0, clock=lambda: now[0])
    affinity.observe(SERVERS[0], {"held": [], "busy": {"a": 1.0, "b": 1.0}, "hits": 0, "misses": 0})
    assert affinity.in_use(60) == 0  # a first report: when they were served is unknown
    now[0] = 10
    affinity.observe(SERVERS[0], {"held": [], "busy": {"a": 2.0, "b": 1.0, "c": 0.5}, "hits": 0, "misses": 0})
    assert affinity.in_use(60) == 2  # a and c (new since the last report); b was not served again
    now[0] = 100
    assert affinity.in_use(60) == 0


def test_values_never_crowd_one_cache_while_another_has_room_and_stay_put() -> None:
    six = [f"m{i}" for i in range(6)]
    before_all = assign({}, dict.fromkeys(MODELS, 1), SERVERS, spread_at=4)
    placed = assign({}, dict.fromkeys(six, 1), SERVERS, spread_at=1, per_server=2)
    per_server = Counter(servers[0] for servers in placed.values())
    assert max(per_server.values()) <= 2  # 6 models, cache 2, 4 replicas: they fit, so each is held
    # Loads that wobble around the bound move nothing that has a home.
    loads = {v: 1.2 + 0.1 * (i % 2) for i, v in enumerate(six)}
    again = assign(loads, dict.fromkeys(six, 1), SERVERS, spread_at=1, per_server=2, previous=placed, known=SERVERS)
    assert again == placed
    # A replica new since then still takes its share: the values that rank it first.
    fifth = "http://10.0.0.5:8888"
    grown = assign({}, dict.fromkeys(MODELS, 1), [*SERVERS, fifth], spread_at=4, previous=before_all, known=SERVERS)
    moved = [v for v in MODELS if grown[v] != before_all[v]]
    assert moved and all(grown[v] == (fifth,) and rank(v, [*SERVERS, fifth])[0] == fifth for v in moved)
    # A hot value spreads only to replicas with spare capacity: none when every one is busy.
    busy = {**dict.fromkeys(six, 1.3), "m0": 4.0}
    assert len(assign(busy, {**dict.fromkeys(six, 1), "m0": 4}, SERVERS, spread_at=1, per_server=2)["m0"]) == 1
