"""podflow's terminal UI: a Textual app over every agent's Observer stream."""
