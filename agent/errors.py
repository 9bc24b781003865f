"""podflow's exception hierarchy. Library errors are wrapped with their cause kept
(`raise AttachError(ifname) from exc`) so messages name what failed and why."""


class PodflowError(Exception):
    """Base of every error podflow reports to a user."""


class ConfigError(PodflowError):
    """A flag or configuration value is wrong; the message names it."""


class DatapathError(PodflowError):
    """eBPF programs could not be compiled, loaded or read."""


class AttachError(DatapathError):
    """One interface could not be attached; the others keep working."""


class MetadataError(PodflowError):
    """Kubernetes metadata could not be read (RBAC, file, API server)."""


class ExportError(PodflowError):
    """The flow log could not be written."""


# --- the agent's stages (config-stage): errors that were defined where they are raised ------


class BtfError(DatapathError):
    """The BTF blob is missing, malformed, or lacks a struct/member/enum podflow needs."""


class TcxUnsupported(AttachError):
    """The kernel has no tcx links (before 6.6): the datapath falls back to clsact + cls_bpf."""


class DnsDecodeError(PodflowError, ValueError):
    """The bytes are not a DNS message; the reason names what was wrong and where. Counted
    (`dns_malformed`), never fatal."""


class ObjectError(MetadataError, ValueError):
    """A Kubernetes object lacks a field podflow cannot do without (e.g. metadata.name)."""


class ConntrackError(MetadataError, OSError):
    """The conntrack table could not be opened (no CAP_NET_ADMIN, no nf_conntrack); an
    OSError too, so its errno is kept. The agent then runs without Service translations."""


class InvalidRequest(PodflowError, ValueError):
    """A GetFlowsRequest that cannot be served; the message names the field (the Observer
    answers INVALID_ARGUMENT with it)."""
