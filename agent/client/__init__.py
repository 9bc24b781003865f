"""The client side of the Observer API: channels and TLS, one resumable stream per agent,
one time-ordered merge of several agents, one printer; the `podflow observe` and
`podflow status` commands. The TUI builds on this package too."""
