"""The Policies view and the policy verdict in the detail pane, driven with Pilot against
real Observer servers whose records carry NetworkPolicy verdicts (as the agent's policy stage
writes them), with the cluster's policies read from a metadata file (--metadata)."""

from __future__ import annotations

import json

import pytest

from podflow_api.v1 import flow_pb2 as F
from tests.tui.conftest import wait_for
from tests.tui.test_app import SIZE, rows, text
from tui.app import create_app

# (client workload, Service) -> (egress, ingress, what became of denied connections)
VERDICTS = {
    ("frontend", "cart"): ((F.POLICY_NOT_ISOLATED,), (F.POLICY_ALLOWED, "shop/cart-in", 0), None),
    ("cart", "redis"): ((F.POLICY_NOT_ISOLATED,), (F.POLICY_DENIED, "shop/redis-in"),
                        F.POLICY_ENFORCED),
    ("checkout", "payments"): ((F.POLICY_NOT_ISOLATED,), (F.POLICY_DENIED, "pay/payments-in"),
                               F.POLICY_NOT_ENFORCED),
}


def judged(flows: list[F.Flow]) -> list[F.Flow]:
    """Give each record the verdict the agent would: by who calls which Service."""
    for f in flows:
        key = (f.source.workload.name, f.service.name)
        verdict = VERDICTS.get(key)
        p = f.policy
        if verdict is None:
            p.egress.verdict = p.ingress.verdict = F.POLICY_NOT_ISOLATED
            continue
        for side, spec in ((p.egress, verdict[0]), (p.ingress, verdict[1])):
            side.verdict = spec[0]
            if len(spec) > 1:
                side.policies.append(spec[1])
            if len(spec) > 2:
                side.rules.add(policy=spec[1], index=spec[2])
                side.reason = F.POLICY_ALLOW_RULE
        if verdict[2] == F.POLICY_ENFORCED:
            f.verdict, f.drop_reason = F.DROPPED, "NETFILTER_DROP"
        if verdict[2] is not None:
            p.enforcement = verdict[2]
    return flows


def policy(name: str, namespace: str, ingress: list) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": ingress}}


@pytest.fixture
def metadata(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        policy("cart-in", "shop", [{"ports": [{"port": 8080}]}, {"ports": [{"port": 9090}]}]),
        policy("redis-in", "shop", []),
        policy("payments-in", "pay", []),
        policy("quiet", "pay", [{}, {"from": [{"podSelector": {}}]}]),
    ]}))
    return str(path)


def send(agents, n: int) -> None:
    for agent in agents:
        agent.store.extend(judged(agent.cluster.flows(n, node=agent.node)))


async def test_policies_view_shows_each_policy_its_traffic_and_what_is_not_enforced(
        agents, metadata):
    send(agents, 400)
    app = create_app(servers=[a.address for a in agents], metadata=metadata)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "800 flows seen" in text(app, "#status-bar"))
        await pilot.press("5")
        await wait_for(pilot, lambda: len(rows(app, "policies-table")) == 4, what="4 policies")
        table = {r[0]: r for r in rows(app, "policies-table")}
        first = rows(app, "policies-table")[0]
        assert first[0] == "pay/payments-in" and first[6] == "NOT ENFORCED"
        assert int(first[2].replace(",", "")) > 0 and first[2] == first[4]  # denied = delivered
        redis = table["shop/redis-in"]
        assert redis[6] == "enforced" and redis[2] == redis[3] and redis[4] == "0"
        cart = table["shop/cart-in"]
        assert int(cart[1].replace(",", "")) > 0 and cart[2] == "0"
        assert cart[7] == "1 of 2: ingress[1]"                   # port 9090: never used
        quiet = table["pay/quiet"]
        assert quiet[1:6] == ["0", "0", "0", "0", "0"]
        assert quiet[7] == "2 of 2: ingress[0], ingress[1]"
        header = text(app, "#policies-header")
        assert "Policies: 4" in header and "1 NOT ENFORCED" in header

        # The filter words reach this view too.
        await pilot.press("slash", *"policy-verdict=not-enforced", "enter")
        await wait_for(pilot, lambda: [r[0] for r in rows(app, "policies-table")
                                       if r[2] != "0"] == ["pay/payments-in"],
                       what="only the unenforced policy's traffic")


async def test_the_detail_pane_says_the_policy_verdict_in_words(agents):
    agents[0].store.extend(judged([f for f in agents[0].cluster.flows(200, node="node-a")
                                   if f.service.name == "payments"][:5]))
    app = create_app(servers=[agents[0].address])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(rows(app, "flows-table")) == 5)
        await pilot.press("d")
        await wait_for(pilot, lambda: "node_name:" in text(app, "#flow-detail-text"))
        detail = text(app, "#flow-detail-text")
        assert ("NetworkPolicy: egress not isolated; ingress DENIED by pay/payments-in; denied "
                "but delivered: the CNI does not enforce it") in detail
        assert "policy.ingress.verdict: POLICY_DENIED" in detail
        await pilot.press("5")
        header = text(app, "#policies-header")
        assert "start with --metadata" in header
        await wait_for(pilot, lambda: rows(app, "policies-table")
                       and rows(app, "policies-table")[0][7] == "?")
