"""NetworkPolicy on any CNI: which policy allowed or denied each connection.

podflow sees every connection (post-DNAT, with both ends named) whatever the CNI, so it can
judge `networking.k8s.io/v1` NetworkPolicy itself and compare the judgement with what the
kernel did. Pure Python, no kernel and no API server:

- model: NetworkPolicy objects parsed from API JSON / YAML into frozen dataclasses, with
  errors that name the object and the field; label selectors with Kubernetes' semantics.
- view: what the evaluator must know about the cluster (the PolicyCluster protocol) and a
  static implementation of it (tests, flow files, what-if).
- cluster: the thin adapter from the enrich stage's ClusterState to PolicyCluster (the only
  module here that imports the Kubernetes cache).
- evaluate: the evaluator: egress verdict at the source pod, ingress verdict at the
  destination pod, cached per identity.
- finding: a verdict joined with what was seen (enforced, not enforced, dropped by
  something else).
- flows: podflow.v1.Flow records -> the connection to evaluate and what was seen of it.
- facts: plain connection facts (both ends' identities, port, Service, counts).
- advise: least-privilege NetworkPolicies from observed connections, as YAML.
- whatif: current + candidate policies against recorded connections.
- yamlout: the small deterministic YAML writer advise uses (comments included).
"""
