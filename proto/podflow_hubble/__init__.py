"""Hubble's wire API as podflow declares it (proto/podflow_hubble/*): the generated modules
import as `podflow_hubble.flow.flow_pb2` etc., while the proto packages stay `flow`,
`observer`, `peer` and `relay`, which is what travels on the wire."""
