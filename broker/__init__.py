"""RabbitMQ transport: topology, confirmed publish, acked consume, RPC, dead letters, trace tap."""
