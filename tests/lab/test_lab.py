"""The lab behaves like a small Kubernetes cluster: pods reach each other on a bridge node,
on a routed node and across nodes; Services are kube-proxy-shaped and spread over their
backends; NodePort works from outside; DNS answers Service names; drop rules drop; and
nothing is left behind, even when the body raises or the owner crashed."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from agent.lab import Lab, LabBusyError, LabError, RUN_ROOT

pytestmark = pytest.mark.root

# Lab ids unique to this process: other test runs on this host build labs at the same time.
SUFFIX = os.getpid() % 10000
LAB_ID, CLEAN_ID, CRASH_ID = f"labtest{SUFFIX}", f"labclean{SUFFIX}", f"labcrash{SUFFIX}"
CLUSTER_IP = "10.96.0.12"
NODE_PORT = 30080


@pytest.fixture(scope="module")
def cluster():
    """Two nodes (bridge + routed), four app pods, a ClusterIP+NodePort Service over one
    backend per node, a headless Service, cluster DNS and an outside host."""
    with Lab(LAB_ID) as lab:
        a = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
        b = lab.add_node("node-b", kind="routed", pod_cidr="10.244.2.0/24")
        pods = {
            "fe-a": a.add_pod("shop", "frontend-a", labels={"app": "frontend"},
                              owner=("Deployment", "frontend")),
            "cart-a": a.add_pod("shop", "cart-a", labels={"app": "cart"},
                                owner=("Deployment", "cart")),
            "fe-b": b.add_pod("shop", "frontend-b", labels={"app": "frontend"},
                              owner=("Deployment", "frontend")),
            "cart-b": b.add_pod("shop", "cart-b", labels={"app": "cart"},
                                owner=("Deployment", "cart")),
            "db-b": b.add_pod("data", "db-0", labels={"app": "db"}, owner=("StatefulSet", "db")),
        }
        for key in ("cart-a", "cart-b"):
            pods[key].serve(8080)
        svc = lab.add_service("shop", "cart", cluster_ip=CLUSTER_IP, port=80,
                              backends=[(pods["cart-a"], 8080), (pods["cart-b"], 8080)],
                              node_port=NODE_PORT, port_name="http")
        headless = lab.add_service("data", "db", headless=True, port=5432,
                                   backends=[(pods["db-b"], 5432)])
        dns = lab.add_dns_server()
        outside = lab.add_outside_host("client")
        yield {"lab": lab, "a": a, "b": b, "pods": pods, "svc": svc, "headless": headless,
               "dns": dns, "outside": outside}


@pytest.mark.parametrize("src,dst", [
    ("fe-a", "cart-a"),   # bridge node, same node
    ("fe-b", "cart-b"),   # routed node, same node
    ("fe-a", "cart-b"),   # bridge -> routed
    ("fe-b", "cart-a"),   # routed -> bridge
], ids=["bridge-same-node", "routed-same-node", "bridge-to-routed", "routed-to-bridge"])
def test_pods_ping_each_other(cluster, src, dst):
    pods = cluster["pods"]
    res = pods[src].run(["ping", "-c", "3", "-i", "0.2", "-W", "2", pods[dst].ip],
                        capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert " 0% packet loss" in res.stdout


def test_pod_layout_matches_cni_conventions(cluster):
    a, b, pods = cluster["a"], cluster["b"], cluster["pods"]
    for pod in pods.values():
        assert pod.host_ifname.startswith("veth") and len(pod.host_ifname) == 12
        links = pod.run(["ip", "-o", "link", "show", "eth0"], capture_output=True, text=True)
        assert "eth0@" in links.stdout
    bridge_ports = a.run(["ip", "-o", "link", "show", "master", "cni0"], capture_output=True,
                         text=True).stdout
    assert pods["fe-a"].host_ifname in bridge_ports
    routes_b = b.run(["ip", "route"], capture_output=True, text=True).stdout
    assert f"{pods['fe-b'].ip} dev {pods['fe-b'].host_ifname}" in routes_b
    assert "10.244.1.0/24 via " + a.ip in routes_b
    proxy_arp = b.run(["sysctl", "-n", f"net.ipv4.conf.{pods['fe-b'].host_ifname}.proxy_arp"],
                      capture_output=True, text=True).stdout.strip()
    assert proxy_arp == "1"
    pod_routes = pods["fe-b"].run(["ip", "route"], capture_output=True, text=True).stdout
    assert "default via 169.254.1.1 dev eth0 onlink" in pod_routes
    # The node's uplink carries the default route (that is how the agent tells it apart).
    assert "default via 172.18.0.1 dev eth0" in a.run(["ip", "route"], capture_output=True,
                                                        text=True).stdout
    assert a.run(["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"], capture_output=True,
                 text=True).stdout.strip() == "1"


@pytest.mark.parametrize("client", ["fe-a", "fe-b"], ids=["from-bridge-node", "from-routed-node"])
def test_cluster_ip_reaches_both_backends(cluster, client):
    pod = cluster["pods"][client]
    seen = collections.Counter(pod.reply_name(pod.fetch(CLUSTER_IP, 80)) for _ in range(24))
    assert set(seen) == {"cart-a", "cart-b"}, seen


@pytest.mark.parametrize("node", ["a", "b"], ids=["via-node-a", "via-node-b"])
def test_node_port_from_outside_host(cluster, node):
    outside = cluster["outside"]
    node_ip = cluster[node].ip
    seen = {outside.reply_name(outside.fetch(node_ip, NODE_PORT)) for _ in range(16)}
    assert seen == {"cart-a", "cart-b"}


def test_iptables_are_kube_proxy_shaped(cluster):
    for node in (cluster["a"], cluster["b"]):
        nat = node.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        assert "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES" in nat
        assert f"-d {CLUSTER_IP}/32 -p tcp" in nat
        assert "-m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-" in nat
        assert f"--dport {NODE_PORT} -j KUBE-EXT-" in nat
        assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in nat
        assert "-j MASQUERADE" in nat and "KUBE-POSTROUTING" in nat
        assert "--dst-type LOCAL -j KUBE-NODEPORTS" in nat
        # headless Services get no ClusterIP rules
        assert "data/db" not in nat


def test_dns_answers_service_names(cluster):
    pod = cluster["pods"]["fe-a"]
    assert pod.resolve("cart.shop.svc.cluster.local") == ("NOERROR", [CLUSTER_IP])
    assert pod.resolve("db.data.svc.cluster.local") == ("NOERROR", [cluster["pods"]["db-b"].ip])
    rcode, ips = pod.resolve("nope.shop.svc.cluster.local")
    assert rcode == "NXDOMAIN" and ips == []
    # from the other node too (the DNS pod lives on node-a)
    assert cluster["pods"]["fe-b"].resolve("cart.shop.svc.cluster.local")[1] == [CLUSTER_IP]


def test_dns_follows_services_added_later(cluster):
    lab, pod = cluster["lab"], cluster["pods"]["fe-b"]
    lab.add_service("shop", "late", cluster_ip="10.96.0.77", port=80,
                    backends=[(cluster["pods"]["cart-a"], 8080)])
    deadline = time.monotonic() + 3
    while pod.resolve("late.shop.svc.cluster.local")[0] != "NOERROR":
        assert time.monotonic() < deadline, "dnsmasq did not pick up the new Service"
        time.sleep(0.1)
    assert pod.resolve("late.shop.svc.cluster.local") == ("NOERROR", ["10.96.0.77"])


def test_drop_rule_blocks_only_that_pair(cluster):
    lab, pods = cluster["lab"], cluster["pods"]
    rule = lab.add_drop_rule(pods["fe-b"], pods["cart-a"], port=8080)
    try:
        assert pods["fe-b"].fetch(pods["cart-a"].ip, 8080, timeout_s=1, check=False) == ""
        assert pods["fe-a"].reply_name(pods["fe-a"].fetch(pods["cart-a"].ip, 8080)) == "cart-a"
        fwd = cluster["a"].run(["iptables-save", "-t", "filter"], capture_output=True,
                               text=True).stdout
        assert f"-A FORWARD -s {pods['fe-b'].ip}/32 -d {pods['cart-a'].ip}/32 -p tcp" in fwd
    finally:
        lab.remove_drop_rule(rule)
    assert pods["fe-b"].reply_name(pods["fe-b"].fetch(pods["cart-a"].ip, 8080)) == "cart-a"


def test_drop_rule_on_a_bridge_node_same_node(cluster):
    """Bridged traffic goes through FORWARD because bridge-nf-call-iptables=1."""
    lab, pods = cluster["lab"], cluster["pods"]
    rule = lab.add_drop_rule(pods["fe-a"], pods["cart-a"], port=8080)
    try:
        assert pods["fe-a"].fetch(pods["cart-a"].ip, 8080, timeout_s=1, check=False) == ""
    finally:
        lab.remove_drop_rule(rule)


def test_metadata_looks_like_kubectl_output(cluster, tmp_path):
    lab = cluster["lab"]
    path = lab.write_metadata(str(tmp_path / "meta.json"))
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    assert doc["kind"] == "List" and doc["apiVersion"] == "v1"
    by_kind = collections.defaultdict(dict)
    for item in doc["items"]:
        by_kind[item["kind"]][(item["metadata"].get("namespace"), item["metadata"]["name"])] = item
    assert set(by_kind) == {"Node", "Pod", "Service", "EndpointSlice", "ReplicaSet", "Namespace"}
    assert by_kind["Namespace"][(None, "shop")]["metadata"]["labels"] == {
        "kubernetes.io/metadata.name": "shop"}

    node_a = by_kind["Node"][(None, "node-a")]
    assert node_a["spec"]["podCIDR"] == "10.244.1.0/24"
    assert {"type": "InternalIP", "address": cluster["a"].ip} in node_a["status"]["addresses"]

    fe = by_kind["Pod"][("shop", "frontend-a")]
    assert fe["spec"] == {**fe["spec"], "nodeName": "node-a", "hostNetwork": False}
    assert fe["status"]["podIP"] == cluster["pods"]["fe-a"].ip
    assert fe["status"]["podIPs"] == [{"ip": fe["status"]["podIP"]}]
    assert fe["status"]["phase"] == "Running"
    assert fe["metadata"]["labels"] == {"app": "frontend"}
    for key in ("uid", "resourceVersion"):
        assert fe["metadata"][key]
    rs_ref = fe["metadata"]["ownerReferences"][0]
    assert rs_ref["kind"] == "ReplicaSet" and rs_ref["controller"] is True
    rs = by_kind["ReplicaSet"][("shop", rs_ref["name"])]
    assert rs["metadata"]["uid"] == rs_ref["uid"]
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert rs["metadata"]["ownerReferences"][0]["name"] == "frontend"
    db = by_kind["Pod"][("data", "db-0")]
    assert db["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet"

    cart = by_kind["Service"][("shop", "cart")]["spec"]
    assert cart["clusterIP"] == CLUSTER_IP and cart["clusterIPs"] == [CLUSTER_IP]
    assert cart["type"] == "NodePort" and cart["selector"] == {"app": "cart"}
    assert cart["ports"] == [{"name": "http", "port": 80, "targetPort": 8080,
                              "nodePort": NODE_PORT, "protocol": "TCP"}]
    assert by_kind["Service"][("data", "db")]["spec"]["clusterIP"] == "None"

    slices = [s for (ns, _), s in by_kind["EndpointSlice"].items()
              if s["metadata"]["labels"]["kubernetes.io/service-name"] == "cart" and ns == "shop"]
    assert len(slices) == 1 and slices[0]["addressType"] == "IPv4"
    eps = {e["targetRef"]["name"]: e for e in slices[0]["endpoints"]}
    assert set(eps) == {"cart-a", "cart-b"}
    assert eps["cart-b"]["nodeName"] == "node-b"
    assert eps["cart-b"]["addresses"] == [cluster["pods"]["cart-b"].ip]
    assert eps["cart-b"]["conditions"]["ready"] is True
    assert eps["cart-b"]["targetRef"] == {**eps["cart-b"]["targetRef"], "kind": "Pod",
                                          "namespace": "shop"}
    assert slices[0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    dns = by_kind["Service"][("kube-system", "kube-dns")]["spec"]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}


def test_pod_added_and_removed_while_running(cluster, snapshot):
    lab, a = cluster["lab"], cluster["a"]
    pod = a.add_pod("shop", "tmp-1", labels={"app": "tmp"})
    assert pod.run(["ping", "-c", "1", "-W", "2", cluster["pods"]["cart-b"].ip],
                   capture_output=True, check=False).returncode == 0
    links = a.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert pod.host_ifname in links
    a.remove_pod(pod)
    assert pod.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                           text=True).stdout
    assert pod.host_ifname not in a.run(["ip", "-o", "link"], capture_output=True,
                                        text=True).stdout
    assert all(p["metadata"]["name"] != "tmp-1" for p in lab.metadata()["items"])


def _mac(netns: str, dev: str) -> str:
    out = subprocess.run(["ip", "-n", netns, "-br", "link", "show", dev], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[2]


def test_bridges_keep_their_address_when_a_lower_one_joins(cluster):
    """Linux gives a bridge its lowest port MAC unless one was set, so a new port could
    re-address a gateway under the ARP caches of pods and hosts: frames to the old address
    (another port's) then reached the bridge as not addressed to it and were dropped, and
    the first connection after adding a pod or an outside host timed out."""
    lab, a, pods, outside = cluster["lab"], cluster["a"], cluster["pods"], cluster["outside"]
    before = (_mac(a.netns, "cni0"), _mac(lab.underlay, "br0"))
    # A client whose own veth does not carry the gateway's address (that one would pass).
    client = next(p for p in (pods["fe-a"], pods["cart-a"])
                  if _mac(a.netns, p.host_ifname) != before[0])
    # Fresh ARP entries for both gateways, holding the addresses they have now.
    for host, gateway in ((client, a.gateway), (outside, "172.18.0.1")):
        host.run(["ping", "-c", "1", "-W", "2", gateway], capture_output=True)
    pod = a.add_pod("shop", "low-mac")
    try:
        a.run(["ip", "link", "set", pod.host_ifname, "address", "02:00:00:00:00:01"])
        lab.add_outside_host("low-mac")
        subprocess.run(["ip", "-n", lab.underlay, "link", "set", f"o{len(lab.outside_hosts) - 1}",
                        "address", "02:00:00:00:00:02"], check=True)
        assert (_mac(a.netns, "cni0"), _mac(lab.underlay, "br0")) == before
        reply = client.fetch(pods["cart-b"].ip, 8080, timeout_s=3)
        assert client.reply_name(reply) == "cart-b"
        assert outside.reply_name(outside.fetch(pods["cart-a"].ip, 8080, timeout_s=3)) == "cart-a"
    finally:
        a.remove_pod(pod)


def test_same_lab_id_twice_is_refused(cluster):
    with pytest.raises(LabBusyError):
        Lab(LAB_ID)


def test_cleanup_leaves_nothing_even_when_the_body_raises(snapshot):
    before = snapshot(f"pf{CLEAN_ID}")
    with pytest.raises(RuntimeError):
        with Lab(CLEAN_ID) as lab:
            a = lab.add_node("node-a", kind="bridge")
            b = lab.add_node("node-b", kind="routed")
            p1, p2 = a.add_pod("x", "p1"), b.add_pod("x", "p2")
            p2.serve(8080)
            lab.add_service("x", "s", cluster_ip="10.96.0.50", backends=[(p2, 8080)],
                            node_port=30001)
            lab.add_dns_server()
            lab.add_outside_host("o")
            lab.add_drop_rule(p1, p2, port=9)
            p1.popen(["sleep", "600"])
            assert snapshot(f"pf{CLEAN_ID}")["netns"]
            raise RuntimeError("body failed")
    lab.cleanup()  # idempotent
    after = snapshot(f"pf{CLEAN_ID}")
    assert after == {**before, "netns": []}
    assert not os.path.exists(os.path.join(RUN_ROOT, CLEAN_ID))


def test_cleanup_leftovers_after_a_crash(snapshot):
    before = snapshot(f"pf{CRASH_ID}")
    crash = textwrap.dedent(f"""
        import os, subprocess
        from agent.lab import Lab
        lab = Lab("{CRASH_ID}")
        a = lab.add_node("node-a", kind="bridge")
        p = a.add_pod("x", "p1")
        p.popen(["sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os._exit(3)   # no cleanup: a crash
    """)
    res = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 3, res.stderr
    assert snapshot(f"pf{CRASH_ID}")["netns"], "the crashed run should have left namespaces"
    assert CRASH_ID in Lab.leftovers()
    assert Lab.cleanup_leftovers(CRASH_ID) == [CRASH_ID]
    assert snapshot(f"pf{CRASH_ID}") == {**before, "netns": []}
    assert CRASH_ID not in Lab.leftovers()


def test_live_labs_are_not_leftovers(cluster):
    assert LAB_ID not in Lab.leftovers()


def test_bad_arguments_are_named(cluster):
    lab = cluster["lab"]
    with pytest.raises(LabError, match="node kind"):
        lab.add_node("x", kind="vxlan")
    with pytest.raises(LabError, match="cluster_ip"):
        lab.add_service("shop", "nope", port=80)
