"""The event bus: emit(), @subscriber, events and deliveries (each delivery is a job)."""
