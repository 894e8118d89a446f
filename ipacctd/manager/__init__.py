"""The engine behind every front door: units, their store, apply/read/remove."""
