"""Alerts (SPEC section 12): rules, the outbox the write path fills, and the delivery of it."""
