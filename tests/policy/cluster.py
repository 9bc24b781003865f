"""The small cluster the policy tests evaluate against, as plain tables.

    node-a 192.168.0.1 (CNI gateway 10.0.1.254)     node-b 192.168.0.2
    shop/cart-1      10.0.1.1  app=cart,tier=backend     http 8080/TCP, metrics 9090/TCP
    shop/cart-2      10.0.2.1  app=cart,tier=backend     (node-b)
    shop/checkout    10.0.1.2  app=checkout,tier=backend
    shop/legacy      10.0.1.6  app=legacy                container ports unknown
    web/storefront   10.0.1.3  app=storefront,role=frontend   http 80/TCP
    data/db          10.0.2.2  app=db,role=db            pg 5432/TCP
    data/cart-in-data 10.0.2.5 app=cart
    dev/tester       10.0.2.3  app=tester
    dev/cart-copy    10.0.2.4  app=cart,tier=backend
    kube-system/coredns 10.0.1.4 k8s-app=kube-dns        dns 53/UDP, dns-tcp 53/TCP
    kube-system/kube-proxy 192.168.0.1 host network on node-a
    default/client   10.0.1.5  role=client
    Namespaces: shop team=shop,env=prod; web team=web,env=prod; data env=prod,tier=data;
    dev env=dev; kube-system, default: no labels (kubernetes.io/metadata.name implied).
"""

from __future__ import annotations

from agent.policy.view import ContainerPort, PodInfo, StaticCluster

CART1, CART2, CHECKOUT, LEGACY = "10.0.1.1", "10.0.2.1", "10.0.1.2", "10.0.1.6"
STOREFRONT, DB, CART_IN_DATA = "10.0.1.3", "10.0.2.2", "10.0.2.5"
TESTER, CART_COPY, COREDNS, CLIENT = "10.0.2.3", "10.0.2.4", "10.0.1.4", "10.0.1.5"
NODE_A, NODE_B, GATEWAY_A = "192.168.0.1", "192.168.0.2", "10.0.1.254"
WORLD = "93.184.216.34"

TCP = lambda name, port: ContainerPort(name, port, "TCP")  # noqa: E731
UDP = lambda name, port: ContainerPort(name, port, "UDP")  # noqa: E731

PODS = {
    CART1: PodInfo("shop", "cart-1", {"app": "cart", "tier": "backend"}, "node-a",
                   (TCP("http", 8080), TCP("metrics", 9090))),
    CART2: PodInfo("shop", "cart-2", {"app": "cart", "tier": "backend"}, "node-b",
                   (TCP("http", 8080), TCP("metrics", 9090))),
    CHECKOUT: PodInfo("shop", "checkout", {"app": "checkout", "tier": "backend"}, "node-a", ()),
    LEGACY: PodInfo("shop", "legacy", {"app": "legacy"}, "node-a", None),
    STOREFRONT: PodInfo("web", "storefront", {"app": "storefront", "role": "frontend"}, "node-a",
                        (TCP("http", 80),)),
    DB: PodInfo("data", "db", {"app": "db", "role": "db"}, "node-b", (TCP("pg", 5432),)),
    CART_IN_DATA: PodInfo("data", "cart-in-data", {"app": "cart"}, "node-b", ()),
    TESTER: PodInfo("dev", "tester", {"app": "tester"}, "node-b", ()),
    CART_COPY: PodInfo("dev", "cart-copy", {"app": "cart", "tier": "backend"}, "node-b", ()),
    COREDNS: PodInfo("kube-system", "coredns", {"k8s-app": "kube-dns"}, "node-a",
                     (UDP("dns", 53), TCP("dns-tcp", 53))),
    CLIENT: PodInfo("default", "client", {"role": "client"}, "node-a", ()),
    # A host-network pod shares its node's address: policy treats it as the node.
    NODE_A: PodInfo("kube-system", "kube-proxy", {"k8s-app": "kube-proxy"}, "node-a", (),
                    host_network=True),
}
NODES = {NODE_A: "node-a", NODE_B: "node-b", GATEWAY_A: "node-a"}
NAMESPACES = {
    "shop": {"team": "shop", "env": "prod"},
    "web": {"team": "web", "env": "prod"},
    "data": {"env": "prod", "tier": "data"},
    "dev": {"env": "dev"},
    "kube-system": {},
    "default": {},
}


def cluster() -> StaticCluster:
    return StaticCluster(pods=PODS, nodes=NODES, namespaces=NAMESPACES)


def np(name: str, namespace: str, **spec) -> dict:
    """A NetworkPolicy manifest; spec fields in their API spelling (from_ for `from`)."""
    if "ingress" in spec:
        spec["ingress"] = [{("from" if k == "from_" else k): v for k, v in rule.items()}
                           for rule in spec["ingress"]]
    if "pod_selector" in spec:
        spec["podSelector"] = spec.pop("pod_selector")
    if "policy_types" in spec:
        spec["policyTypes"] = spec.pop("policy_types")
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def labels(**pairs) -> dict:
    return {"matchLabels": dict(pairs)}
