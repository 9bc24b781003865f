"""NetworkPolicy on any CNI: which policy allowed or denied each connection.

podflow sees every connection (post-DNAT, with both ends named) whatever the CNI, so it can
judge `networking.k8s.io/v1` NetworkPolicy itself and compare the judgement with what the
kernel did. Pure Python, no kernel (the stage reads the enrich stage's cache):

- model: NetworkPolicy objects as frozen dataclasses and what they mean; selectors: label
  selectors with Kubernetes' semantics; parse: one object from API JSON / YAML, validated
  and defaulted, errors naming the object and the field; load: many objects at once.
- view: what the evaluator must know about the cluster (the PolicyCluster protocol) and a
  static implementation of it (tests, flow files, what-if).
- cluster: the thin adapter from the enrich stage's ClusterState to PolicyCluster (the only
  module here that imports the Kubernetes cache).
- verdict: what the evaluator answers (per direction, per connection); compiled: a policy
  set compiled into bitmasks, with its caches; evaluate: the evaluator (egress verdict at the
  source pod, ingress verdict at the destination pod, cached per identity).
- stage: the policy stage of `podflow agent`; feed: keeps the evaluator in step with the
  Kubernetes cache's NetworkPolicy objects; judge: what enrichment calls per new connection
  (the verdict as record bytes) and per record (what it shows of the verdict).
- finding: a verdict joined with what was seen (enforced, not enforced, dropped by
  something else).
- flows: podflow.v1.Flow records -> the connection to evaluate and what was seen of it.
- facts: plain connection facts (both ends' identities, port, Service, counts).
- advise: least-privilege NetworkPolicies from observed connections, as YAML.
- whatif: current + candidate policies against recorded connections.
- yamlout: the small deterministic YAML writer advise uses (comments included).
- metadata: the cluster and its current policies for the tools (`--metadata
  kubernetes|FILE|none`, read once through the agent's own sources).
"""
