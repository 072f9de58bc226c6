"""The actors: queue, worker, scaler, swarm supervisor, gateway, http, metrics, alerts, and the CLI."""
