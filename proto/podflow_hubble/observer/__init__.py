"""Generated protobuf modules (run `make proto`)."""
