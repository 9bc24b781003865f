"""Kubernetes metadata for podflow: what the cluster knows about addresses.

- objects: the few fields podflow needs from pods, Services, EndpointSlices, nodes, ...
  parsed from the API's JSON (the same JSON the API server streams and kubectl prints).
- state: the cache of those objects and the indexes the enricher reads (IP -> pod or node,
  ClusterIP:port -> Service, NodePort -> Service, headless endpoint IP -> Service).
- filesource: a `kubectl get ... -o json` file, reloaded when it changes.
- kubesource: list+watch of the API server with the official `kubernetes` client.
"""
