"""Custom pyinfra operations (generators that read facts and yield commands or noops)."""
