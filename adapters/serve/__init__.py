"""`natrelay serve`: the engine as a local service — protocol, schema, engines and log, transport, lease."""
