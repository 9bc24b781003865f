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


# -- the client side (agent/client) ------------------------------------------------------------

class RequestRejected(PodflowError):
    """An agent refused the request itself (INVALID_ARGUMENT): retrying cannot help."""

    def __init__(self, address: str, details: str):
        super().__init__(f"{address}: {details}")
        self.address = address
        self.details = details
