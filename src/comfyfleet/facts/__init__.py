"""Custom pyinfra facts: one round trip each, answering everything one operation needs."""
